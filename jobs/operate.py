"""ray job submit -- python jobs/operate.py --config CONFIG [--base-dir DIR] [--cycles N]:
the retraining loop as a long-running job (resubmitted, it resumes its unfinished cycle)."""

from rayops.operate import operate
from rayops.runtime import errors_in_one_line, job_args

if __name__ == "__main__":
    with errors_in_one_line():
        args = job_args(__doc__)
        state = operate(args.cfg, args.cycles, say=print)
        print(f"stopped after cycle {state.cycle}: {state.facts.get('outcome', 'no retrain')}")
