"""Data: pairing conventions, pair I/O, the paired dataset and its augmentation, predict sources, vedai-synth, VEDAI,
DroneVehicle."""

from .check import build_dataset, check_data, resolve_data
from .dataset import PairedDataset
from .dronevehicle import convert_dronevehicle
from .io import MODALITIES, load_pair
from .pairing import Pairing
from .sources import LoadImagePairs, find_pairs
from .synthetic import generate_vedai_synth
from .vedai import VEDAI_NAMES, convert_vedai

__all__ = ("MODALITIES", "VEDAI_NAMES", "LoadImagePairs", "PairedDataset", "Pairing", "build_dataset", "check_data",
           "convert_dronevehicle", "convert_vedai", "find_pairs", "generate_vedai_synth", "load_pair", "resolve_data")
