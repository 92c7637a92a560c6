"""The CST model: coordinate encoding, the two architectures, their modes, losses.

- `cst.py`: the CST done right (mode "cst"); `paper.py`: the released architecture (modes
  "paper" and "transformer"); `layers.py`: blocks both share; `_gather.py`: the decoder's
  own-channel index machinery;
- `modes.py`: the registry of modes (how each is built, trained and queried);
- `encoding.py`, `taylor.py`, `interpolant.py`: coordinate features, Taylor jets, the
  interpolant base; `sobolev.py`, `dummies.py`: losses and the paper's dummy tokens.

Import from the submodules. This package's own import is empty, so that
`cst_neuro.model.modes` lists the modes without importing torch; the other submodules do.
"""
