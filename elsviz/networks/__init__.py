"""Trained denoisers to hold the theory against (a ResNet and a UNet that predict the noise): the models,
their checkpoints, and training. load_network(folder) gives a denoiser for sample(); docs/AGREEMENT.md."""
from .checkpoints import (BUNDLED, CONFIG, FORMAT, SCHEDULE, VERSION, Network, NetworkPosterior, TrainedOn,
                          atomic_write, calibrated_schedules, catalogue, default_network_dir, file_sha256,
                          fit_weights, load_network, load_weights, model_of, network_for, read_config, read_schedule,
                          save_checkpoint, save_schedule)
from .models import (ARCHS, DEFAULTS, Embedding, ResNetDenoiser, UNetDenoiser, build_model, model_sizes,
                     receptive_field, time_features)
from .training import T_MIN, TrainProgress, train_network


__all__ = [
    "ARCHS", "BUNDLED", "CONFIG", "DEFAULTS", "FORMAT", "SCHEDULE", "T_MIN", "VERSION",
    "Embedding", "Network", "NetworkPosterior", "ResNetDenoiser", "TrainProgress", "TrainedOn", "UNetDenoiser",
    "atomic_write", "build_model", "calibrated_schedules", "catalogue", "default_network_dir", "file_sha256",
    "fit_weights", "load_network", "load_weights", "model_of", "model_sizes", "network_for", "read_config",
    "read_schedule", "receptive_field", "save_checkpoint", "save_schedule", "time_features", "train_network",
]
