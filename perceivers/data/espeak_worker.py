"""The child process that synthesises words with libespeak-ng for :mod:`perceivers.data.speech` (run as a script:
``python espeak_worker.py LIBRARY DATA REQUESTS.json OUT.npz``; it imports only ctypes and NumPy, so it starts in a
fraction of a second).

It loads the library through ``ctypes``, initialises it for synchronous retrieval (a synth callback collects the
int16 samples; nothing is played), seeds espeak's noise generator with 0 and synthesises each ``(word, voice,
rate, pitch)`` request in order. espeak-ng keeps state from one utterance to the next, so a fresh process making the
same requests in the same order gives identical samples: that is why this runs in a child process.

Exit status: 0 with ``OUT.npz`` written (``version``, ``lengths (N,)``, ``audio`` the concatenated int16 samples);
2 when the library cannot be loaded or initialised, 3 for a voice espeak-ng does not know; the reason is the last
line on stderr.
"""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np

ESPEAK_RATE = 22_050  # Hz: what espeak-ng's voices synthesise
SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: the synth callback receives the samples (speak_lib.h)
DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: report errors instead of exiting the process
RATE, PITCH = 1, 3  # espeak_PARAMETER
POS_CHARACTER, CHARS_UTF8 = 1, 1
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
LOAD_FAILED, UNKNOWN_VOICE = 2, 3


class EspeakError(Exception):
    """A reason to stop with ``status`` (:data:`LOAD_FAILED` or :data:`UNKNOWN_VOICE`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Espeak:
    """libespeak-ng at ``library`` with the voices at ``data``, initialised for synchronous retrieval."""

    def __init__(self, library: str, data: str) -> None:
        try:
            self.lib = lib = ctypes.CDLL(library)
        except OSError as exc:
            raise EspeakError(f"could not load the espeak-ng library {library}: {exc}", LOAD_FAILED) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(SYNCHRONOUS, 0, data.encode(), DONT_EXIT)
        if rate != ESPEAK_RATE:
            raise EspeakError(f"espeak-ng did not initialise with the voices at {data} (it returned {rate}, "
                              f"expected the sample rate {ESPEAK_RATE})", LOAD_FAILED)
        self.chunks: list[np.ndarray] = []
        self.callback = CALLBACK(self._collect)  # kept alive as long as the library may call it
        lib.espeak_SetSynthCallback(self.callback)
        lib.espeak_ng_SetRandSeed(ctypes.c_long(0))  # else its noise generator is seeded differently per process
        self.version = lib.espeak_Info(None).decode()

    def _collect(self, samples: object, count: int, events: object) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # continue

    def say(self, word: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """Samples ``(S,)`` int16 at 22,050 Hz of ``word`` spoken by ``voice`` at ``rate`` words per minute and base
        ``pitch`` (0..100)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"voice={voice!r} is invalid: expected an espeak-ng voice such as 'en-us+f3' "
                              f"(an accent, '+', a variant)", UNKNOWN_VOICE)
        self.lib.espeak_SetParameter(RATE, int(rate), 0)
        self.lib.espeak_SetParameter(PITCH, int(pitch), 0)
        text = word.encode() + b"\0"
        self.chunks = []
        status = self.lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != 0 or self.lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"espeak-ng failed to synthesise {word!r} with {voice!r} (status {status})")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def main(library: str, data: str, requests_path: str, out_path: str) -> int:
    """Synthesise the requests of ``requests_path`` into ``out_path``; the exit status (see the module docstring)."""
    try:
        espeak = Espeak(library, data)
        with open(requests_path, encoding="utf-8") as fh:
            samples = [espeak.say(*request) for request in json.load(fh)]
    except EspeakError as exc:
        print(str(exc), file=sys.stderr)
        return exc.status
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    audio = np.concatenate(samples) if samples else np.zeros(0, np.int16)
    with open(out_path, "wb") as fh:
        np.savez(fh, version=np.array(espeak.version), lengths=lengths, audio=audio)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
