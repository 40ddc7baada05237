"""Re-pickle a checkpoint written under numpy 2 (the lent GPU machine) so this venv's numpy 1.26 reads it.

    python cluster/repickle_numpy1.py CHECKPOINT_DIR

RLlib's checkpoints are pickles: numpy 2 names ``numpy._core`` where numpy 1.26 has ``numpy.core``, and
pickles bit generators (by class, state as (dict, seed_seq)) and generators (by instance) in a form 1.26
cannot read. Every ``*.pkl`` under the folder that mentions numpy is loaded with those names mapped and
written back in 1.26's own format (checked by reading it back). Without it, a GPU checkpoint fails here
with "No module named 'numpy._core.numeric'". cluster/gpu_train.sh's header says when to run it.
"""

import pathlib, pickle, sys
import numpy as np
import numpy.random._pickle as nrp

_sub = {}
def _tolerant(cls):
    if cls not in _sub:
        class T(cls):
            def __setstate__(self, s):
                super().__setstate__(s[0] if isinstance(s, tuple) else s)
            def __reduce__(self):  # numpy 1.26's own format
                return (getattr(nrp, "__bit_generator_ctor"), (cls.__name__,), self.state)
        T.__name__ = T.__qualname__ = cls.__name__
        _sub[cls] = T
    return _sub[cls]

def bitgen_ctor(bit_generator=None, *a):
    cls = bit_generator if isinstance(bit_generator, type) else getattr(np.random, bit_generator or "MT19937")
    return _tolerant(cls)()

def generator_ctor(bit_generator_name="MT19937", *a, **kw):
    if isinstance(bit_generator_name, np.random.BitGenerator):
        return np.random.Generator(bit_generator_name)
    return nrp.__generator_ctor(bit_generator_name, *a, **kw)

class U(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "numpy._core" or module.startswith("numpy._core."):
            module = "numpy.core" + module[len("numpy._core"):]
        if module == "numpy.random._pickle" and name == "__bit_generator_ctor":
            return bitgen_ctor
        if module == "numpy.random._pickle" and name == "__generator_ctor":
            return generator_ctor
        return super().find_class(module, name)

n = 0
if len(sys.argv) != 2:
    sys.exit("usage: python cluster/repickle_numpy1.py CHECKPOINT_DIR")
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.pkl")):
    raw = p.read_bytes()
    if b"numpy._core" not in raw and b"numpy.random" not in raw:
        continue
    with open(p, "rb") as f:
        obj = U(f).load()
    out = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"numpy._core" not in out and b"__main__" not in out, p
    pickle.loads(out)  # reads back under numpy 1.26
    p.write_bytes(out)
    n += 1
    print("converted", p)
print(n, "files")
