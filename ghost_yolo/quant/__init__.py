"""Hybrid quantization: fake quantizers, model conversion, the HQ bit search, and size/BOPs accounting."""

from ghost_yolo.nn.quantizers import (
    FLOAT_BITS,
    QUANTIZERS,
    DoReFaAct,
    DoReFaWeight,
    FakeQuantizer,
    LSQAct,
    LSQWeight,
    check_bits,
)

from .accounting import cost_totals, format_costs, layer_costs
from .apply import (
    KEEP_BITS,
    average_bits,
    calibrate,
    conv_layers,
    float_mode,
    get_bits,
    is_quantized,
    policy_layers,
    quant_layers,
    quantize_model,
    set_bits,
    set_quant_enabled,
    uniform_bits,
)
from .search import (
    bits_table,
    check_search_args,
    hq_plan,
    parse_bits,
    plot_bits,
    resolve_bits,
    save_bit_map,
    search_bits,
)

__all__ = (
    "FLOAT_BITS", "KEEP_BITS", "QUANTIZERS", "DoReFaAct", "DoReFaWeight", "FakeQuantizer", "LSQAct", "LSQWeight",
    "average_bits", "bits_table", "calibrate", "check_bits", "check_search_args", "conv_layers", "cost_totals",
    "float_mode", "format_costs", "hq_plan", "get_bits", "is_quantized", "layer_costs", "parse_bits", "plot_bits",
    "policy_layers", "quant_layers", "quantize_model", "resolve_bits", "save_bit_map", "search_bits", "set_bits",
    "set_quant_enabled", "uniform_bits",
)
