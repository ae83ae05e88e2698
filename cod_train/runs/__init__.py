"""The run layer: what every command shares (the app, the run lifecycle, models from anywhere) and each
command's body. The modules under cod_train/cli are thin shells over these."""
