"""Example partition programs: run one with `xpmove run --config examples/NAME.toml` from the
repository root (pingpong, pipeline, fanout)."""
