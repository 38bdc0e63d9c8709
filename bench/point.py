"""Entry point of one benchmark point in its own process: JSON spec in, JSON result out.

    python -m bench.point --spec '{"family": "DiG", "size": "S", ...}' --result /tmp/result.json

Run by `bench.harness.run_point`; an out-of-memory error here cannot poison the next point.
"""

import argparse
import json
from pathlib import Path

from .harness import PointSpec, measure_point


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="PointSpec as JSON")
    parser.add_argument("--result", required=True, help="path of the JSON result to write")
    args = parser.parse_args(argv)
    fields = json.loads(args.spec)
    fields["plugins"] = tuple(fields.get("plugins", ()))
    result = measure_point(PointSpec(**fields))
    Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
