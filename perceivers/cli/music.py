"""``perceivers generate --midi OUT.mid [--piano-roll OUT.png]`` on a music checkpoint (``perceivers train music``).

The model continues an SOS token (or, with ``--prompt-piece NAME``, the first ``--prompt-steps`` 16th-note steps of
that chorale) with ``--max-new-tokens`` events (4 per 16th note), sampled as ``generate`` samples text; the events
are decoded (:func:`perceivers.data.music.decode_events`) into four voices, written as a MIDI file through music21
and, on request, drawn as a piano roll with matplotlib. Both files are written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from perceivers.cli.common import load_model, set_threads, user_input
from perceivers.core.errors import ConfigError
from perceivers.core.files import atomic_write
from perceivers.core.validation import check_int, fail

VOICE_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:blue")


def add_music_arguments(p: argparse.ArgumentParser) -> None:
    """The music flags of ``perceivers generate``."""
    p.add_argument("--midi", default=None, metavar="OUT.mid",
                   help="music checkpoint (`perceivers train music`): write the generated chorale as MIDI here "
                        "(--max-new-tokens counts events: 4 per 16th note, 64 per 4/4 bar)")
    p.add_argument("--piano-roll", default=None, metavar="OUT.png", help="with --midi: also draw it as a piano roll")
    p.add_argument("--prompt-piece", default=None, metavar="NAME",
                   help="with --midi: continue the opening of this chorale (e.g. bwv10.7) instead of silence")
    p.add_argument("--prompt-steps", type=int, default=16,
                   help="with --prompt-piece: 16th-note steps of its opening to continue (default 16: one bar)")


def wants_music(args: argparse.Namespace) -> bool:
    """Whether ``generate`` was asked for music (any of the music flags)."""
    return args.midi is not None or args.piano_roll is not None or args.prompt_piece is not None


def _check_output(flag: str, path: str | None, suffix: str) -> None:
    if path is None:
        return
    if Path(path).suffix.lower() != suffix:
        fail(flag, path, f"a {suffix} file name")
    if not Path(path).parent.is_dir():
        fail(flag, path, "a file in an existing folder")


def _prompt(args: argparse.Namespace) -> list[int]:
    """SOS, then the opening events of ``--prompt-piece`` (a ConfigError names an unknown piece)."""
    from perceivers.data.music import load_pieces
    from perceivers.tokenizers import AR_SOS_ID

    if args.prompt_piece is None:
        return [AR_SOS_ID]
    check_int("--prompt-steps", args.prompt_steps, minimum=1)
    pieces = load_pieces()
    if args.prompt_piece not in pieces:
        close = sorted(n for n in pieces if n.startswith(args.prompt_piece.split(".")[0]))[:5]
        fail("--prompt-piece", args.prompt_piece, f"a chorale of the corpus, e.g. {', '.join(close or sorted(pieces)[:5])}")
    return [AR_SOS_ID, *map(int, pieces[args.prompt_piece][:4 * args.prompt_steps])]


def cmd_generate_music(args: argparse.Namespace) -> int:
    """Generate events from a music checkpoint and write ``--midi`` (and ``--piano-roll``)."""
    import torch

    from perceivers.data.music import decode_events, playable, to_score
    from perceivers.generation import generate
    from perceivers.generation.sampling import check_sampling_args
    from perceivers.tokenizers import AR_EOS_ID

    set_threads(args.threads)
    if args.midi is None:
        raise ConfigError("--piano-roll and --prompt-piece need --midi OUT.mid (music checkpoints write MIDI)")
    if args.prompt:
        raise ConfigError("--prompt is text; a music checkpoint continues --prompt-piece NAME (or silence)")
    _check_output("--midi", args.midi, ".mid")
    _check_output("--piano-roll", args.piano_roll, ".png")
    check_int("--max-new-tokens", args.max_new_tokens, minimum=1)
    check_sampling_args(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    prompt = _prompt(args)
    model = load_model(args.checkpoint, args.device)
    from perceivers.training.tasks_music import MUSIC_MODEL, is_music_perceiver_ar

    if not is_music_perceiver_ar(getattr(model, "config", None)):
        raise ConfigError(f"--checkpoint {args.checkpoint} is not a {MUSIC_MODEL} (from `perceivers train music`)")
    if len(prompt) > model.config.max_context_length:
        fail("--prompt-steps", args.prompt_steps, f"at most {(model.config.max_context_length - 1) // 4} (the "
                                                  "model's context)")
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    out = generate(model, [prompt], max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_token_id=AR_EOS_ID,
                   generator=generator)
    events = playable(out.sequences[0, 1:int(out.lengths[0])])  # up to an EOS, whole steps
    voices = decode_events(events)
    steps = len(events) // 4
    score = to_score(voices)
    with user_input("--midi"):
        atomic_write(args.midi, lambda tmp: score.write("midi", fp=tmp))
    if args.piano_roll is not None:
        with user_input("--piano-roll"):
            draw_piano_roll(voices, steps, args.piano_roll, prompt_steps=(len(prompt) - 1) // 4)
    notes = sum(len(v) for v in voices)
    print(f"wrote {args.midi}: {steps} 16th-note steps ({steps / 16:.1f} bars of 4/4), {notes} notes"
          + (f"; {args.piano_roll}" if args.piano_roll else ""))
    return 0


def draw_piano_roll(voices: list[list[tuple[int, int, int]]], steps: int, path: str, *, prompt_steps: int = 0,
                    title: str | None = None) -> None:
    """A PNG piano roll of four voices' ``(onset, end, MIDI pitch)`` notes (steps of a 16th note), one colour per
    voice, bar lines every 16 steps; a grey band marks the ``prompt_steps`` that were given, not generated."""
    from perceivers.data.music import VOICES
    from perceivers.training.plot import pyplot

    plt = pyplot("--piano-roll")

    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, steps / 24)), 3.6), dpi=100)
    for notes, name, colour in zip(voices, VOICES, VOICE_COLOURS):
        for onset, end, pitch in notes:
            ax.add_patch(_rect(plt, onset / 16, pitch - 0.4, (end - onset) / 16, 0.8, colour))
        ax.plot([], [], color=colour, linewidth=6, label=name)  # legend handle
    if prompt_steps:
        ax.axvspan(0, prompt_steps / 16, color="0.85", zorder=0, label="prompt")
    pitches = [p for notes in voices for _, _, p in notes] or [60]
    ax.set_xlim(0, max(steps, 1) / 16)
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    for bar in range(1, steps // 16 + 1):
        ax.axvline(bar, color="0.8", linewidth=0.5, zorder=0)
    ax.set_xlabel("bar (4/4)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or "generated chorale (Perceiver AR, perceivers train music)")
    ax.legend(loc="upper right", fontsize=7, ncol=5)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _rect(plt: Any, x: float, y: float, width: float, height: float, colour: str) -> Any:
    return plt.Rectangle((x, y), width, height, facecolor=colour, edgecolor="black", linewidth=0.3)


