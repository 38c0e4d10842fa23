"""``python -m variants build|heal ARGS``: the torch side of ``llm-gateway make-variant`` / ``heal-variant``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``build`` (:func:`variants.builder.main`) or ``heal`` (:func:`variants.healer.main`) on the rest
    of ``argv``; 2 with a usage line for anything else."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"]:
        from variants.builder import main as build

        return build(args[1:])
    if args[:1] == ["heal"]:
        from variants.healer import main as heal

        return heal(args[1:])
    print("usage: python -m variants {build,heal} ... (--help after either for its options)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
