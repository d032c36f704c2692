"""``python -m kosmos2 selfcheck``: this implementation on the real checkpoint, against recorded outputs.

The recorded outputs (``kosmos2/expectations/snowman.json``, a copy of the project's shared facts) come
from two public sources about ``microsoft/kosmos-2-patch14-224`` on its own ``snowman.png``:

- the ``transformers`` integration test (``tests/models/kosmos2/test_modeling_kosmos2.py``,
  ``Kosmos2ModelIntegrationTest``): the PNG saved as JPEG with PIL's defaults and reopened; float32,
  greedy, 128 new tokens; exact ids, processed texts, entities and two 3×3 slices of ``generate``'s
  scores (``torch.concat(scores[1:4])[:3, :3]`` and ``torch.concat(scores[-3:])[-3:, -3:]``) for the
  brief and the detailed grounded caption, and a left-padded batch of both prompts;
- the model card's task examples (the PNG used directly).

The check runs every recorded prompt greedily in float32 and compares: ids, texts and entities exactly,
score slices within ``--atol`` (default 1e-4). It then runs the same in bfloat16 and (on a CPU) with the
int8 text decoder, and reports how they agree with float32 (tokens identical; IoU of matched entities'
boxes). Exit status: 0 when float32 matches everything, 1 when it does not, 2 when the check cannot run
(hub unreachable without ``--checkpoint``/``--image``, bad arguments or files).

The cases and expectations (:mod:`.expectations`) and the comparison (:mod:`.compare`) are pure: plain
values, no model; running the model and the command are :mod:`.command`.
"""

from .command import main

__all__ = ["main"]
