"""Training IndexMem on a CPU (extra `train`): the torch modules (also the numerical reference
of the engine's IndexMem ops), teacher features from the engine, losses, fitting, evaluation."""
