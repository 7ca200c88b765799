"""One module per `vlm-aug` sub-command. Each exposes `register(subparsers)`, which adds
its parser and sets `func` (args -> exit code). Add a command by adding its module here."""

COMMAND_MODULES = [
    "vlm_aug.commands.run",
    "vlm_aug.commands.demo",
    "vlm_aug.commands.eval_scenes",
    "vlm_aug.commands.report",
    "vlm_aug.commands.export",
    "vlm_aug.commands.trace",
    "vlm_aug.commands.stats",
    "vlm_aug.commands.models",
    "vlm_aug.commands.eval_downstream",
]
