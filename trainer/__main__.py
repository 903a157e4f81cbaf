"""``python -m trainer``: the Hydra training app (see ``trainer.train``)."""

from trainer.train import main

if __name__ == "__main__":
    main()
