"""`selfsup generate RUN_DIR`: continue a prompt with a next-token (clm) run's model."""
from __future__ import annotations

from selfsup.errors import ConfigError
from selfsup.run import load_run
from selfsup.text.generate import continue_prompt


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a clm run",
                       description="Continue a prompt with a next-token (clm) run's model: temperature, top-k and "
                                   "top-p (nucleus) sampling, reproducible with --seed. The model reads the prompt "
                                   "after the token that began documents in its training (EOS in a packed corpus).")
    p.add_argument("run_dir", help="run folder of a `selfsup pretrain --method clm` run")
    p.add_argument("--prompt", default="", help="text to continue [default: empty]")
    p.add_argument("--tokens", type=int, default=200, help="new tokens to write [default: 200]")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature [default: 0.8]")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens; 0 = all [default: 40]")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the likeliest tokens whose probability reaches p; 1 = all [default: 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    run = load_run(args.run_dir)
    if not run.method.generates:
        raise ConfigError(f"{args.run_dir} is a {run.config.method.name} run; generate needs a clm run (a causal "
                          "language model)")
    print(args.prompt + continue_prompt(run, args.prompt, max_new_tokens=args.tokens, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed))
    return 0
