"""Write a diagnostic toy pair: the default pair with one group of the target's differences removed.

    PYTHONPATH=. python benchmarks/toy_pair_variant.py /tmp/pair_no_palette --variant palette
    PYTHONPATH=. python benchmarks/uda_toy.py --out /tmp/uda_no_palette --data /tmp/pair_no_palette --seeds 0

The pair ``cicld prepare-data toy`` writes (same generator and seeds), with the target rendered
as one row of ``benchmarks/toy_gap_factors.py`` (e.g. ``palette``: every class keeps the source's
colour in the target). Training the whole method on such a pair asks what adaptation recovers of
the gap that is left once that group is gone: a diagnosis of the toy pair, not a method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from toy_gap_factors import VARIANTS, target_rendered_as  # noqa: E402

from cicld.data.toy import generate_toy_pair, prepare_toy_pair  # noqa: E402

# --variant name -> the row of toy_gap_factors.VARIANTS it renders the target as (in that order;
# strict: a row added there without a name here fails at import rather than shifting the names)
CHOICES = dict(
    zip(("shipped", "camera", "textures", "photograph", "palette", "palette-photograph"), VARIANTS, strict=True)
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="an empty or missing folder")
    parser.add_argument(
        "--variant", choices=sorted(CHOICES), required=True, help="the group of target differences to remove"
    )
    parser.add_argument("--pair-seed", type=int, default=0)
    args = parser.parse_args(argv)
    name = CHOICES[args.variant]
    with target_rendered_as(*VARIANTS[name]):
        # One worker: the variant is a patch of this process's module state.
        summary = generate_toy_pair(args.root, seed=args.pair_seed, workers=1)
    prepare_toy_pair(summary)  # what `cicld prepare-data toy` does after generating
    print(f"wrote {args.root}: target rendered as {name!r} ({summary})")


if __name__ == "__main__":
    main(sys.argv[1:])
