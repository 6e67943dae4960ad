"""The chorale encoding of `perceivers train music` (perceivers.data.music): tokens, round trip on a real chorale,
decoding of any ids, transposition, the fixed split by piece, the cache and the missing-extra error."""

from __future__ import annotations

import importlib.metadata
import sys

import numpy as np
import pytest
import torch

from perceivers.core.errors import ConfigError, UserError
from perceivers.data import music
from perceivers.data.music import (
    HOLD,
    ONSET,
    REST,
    VOCAB_SIZE,
    decode_events,
    encode_score,
    encode_voices,
    is_validation_piece,
    split_corpus,
    to_score,
    transpose,
)
from perceivers.tokenizers import AR_EOS_ID, AR_SOS_ID

# S: C5 for a quarter (4 steps); A: rest 2 steps then G4 for 2; T: E4 for 2, E4 again for 2; B: C3 for 4.
NOTES = [[(0, 4, 72)], [(2, 4, 67)], [(0, 2, 64), (2, 4, 64)], [(0, 4, 48)]]
EVENTS = [ONSET + 72, REST, ONSET + 64, ONSET + 48,
          HOLD, REST, HOLD, HOLD,
          HOLD, ONSET + 67, ONSET + 64, HOLD,
          HOLD, HOLD, HOLD, HOLD]


def test_vocabulary_and_a_hand_made_grid():
    assert (REST, HOLD, ONSET, VOCAB_SIZE) == (3, 4, 5, 133)
    assert encode_voices(NOTES, 4).tolist() == EVENTS
    assert decode_events(EVENTS) == NOTES
    assert decode_events(torch.tensor(EVENTS)) == NOTES


def test_any_ids_decode():
    # a HOLD with nothing to hold is a rest; reading stops at EOS; a partial last step is dropped
    assert decode_events([HOLD, HOLD, REST, ONSET + 60, HOLD, REST, REST, HOLD]) == [[], [], [], [(0, 2, 60)]]
    assert decode_events([ONSET + 60, REST, REST, REST, AR_EOS_ID, ONSET + 61, REST, REST, REST]) == \
        [[(0, 1, 60)], [], [], []]
    assert decode_events([ONSET + 60, REST, REST]) == [[], [], [], []]
    assert decode_events([VOCAB_SIZE + 5] * 4) == [[], [], [], []]


@pytest.fixture(scope="module")
def chorale():
    m21 = pytest.importorskip("music21")
    return m21.corpus.parse("bach/bwv269")  # a short four-part chorale


def test_round_trip_on_a_real_chorale(chorale):
    events = encode_score(chorale)
    assert events.dtype == np.int16 and len(events) % 4 == 0 and len(events) > 400
    assert ((events >= REST) & (events < VOCAB_SIZE)).all()
    first = next(iter(chorale.parts[0].flatten().notes))  # the soprano's first note starts its first onset
    soprano = events[0::4]
    assert soprano[soprano >= ONSET][0] == ONSET + first.pitch.midi
    voices = decode_events(events)
    assert len(voices[3]) == len(chorale.parts[3].stripTies().flatten().notes)
    again = encode_score(to_score(voices))  # events -> notes -> music21 score -> events
    assert np.array_equal(again, events)


def test_a_score_of_other_parts_is_refused(chorale):
    m21 = pytest.importorskip("music21")
    score = m21.stream.Score([m21.stream.Part(), m21.stream.Part()])
    with pytest.raises(ConfigError, match="needs 4 parts"):
        encode_score(score)


def test_transpose_moves_onsets_only_and_keeps_rows_it_would_push_out_of_range():
    windows = torch.tensor([[AR_SOS_ID, ONSET + 60, HOLD, REST], [AR_SOS_ID, ONSET + 125, HOLD, REST]])
    moved = transpose(windows, torch.tensor([3, 3]))
    assert moved.tolist() == [[AR_SOS_ID, ONSET + 63, HOLD, REST], [AR_SOS_ID, ONSET + 125, HOLD, REST]]
    assert transpose(windows, torch.tensor([-5, -5]))[1, 1] == ONSET + 120


def test_the_split_is_fixed_by_piece_name():
    # sha256(name)[:8] % 10 == 0: these values pin the rule (a change would move pieces between the splits)
    names = [f"bwv{i}.6" for i in range(1, 60)]
    assert [n for n in names if is_validation_piece(n)] == EXPECTED_VALIDATION
    pieces = {n: np.array([ONSET + 60, REST, REST, REST], np.int16) for n in names}
    corpus = split_corpus(pieces)
    assert corpus.validation_pieces == tuple(EXPECTED_VALIDATION)
    assert len(corpus.train_pieces) == len(names) - len(EXPECTED_VALIDATION)
    assert corpus.validation[:6].tolist() == [AR_SOS_ID, ONSET + 60, REST, REST, REST, AR_EOS_ID]
    assert corpus.train.numel() == 6 * len(corpus.train_pieces)
    with pytest.raises(ConfigError, match="1 training and 0 validation"):
        split_corpus({"bwv1.6": pieces["bwv1.6"]})


EXPECTED_VALIDATION = ["bwv3.6", "bwv48.6", "bwv51.6", "bwv56.6", "bwv58.6", "bwv59.6"]


def test_cache_round_trip_location_and_rebuild(tmp_path, monkeypatch):
    pieces = {"bwv1.6": np.array(EVENTS, np.int16), "bwv2.6": np.array(EVENTS[:8], np.int16)}
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "env"))
    path = music.cache_path()
    assert path.parent == tmp_path / "env" / "music"
    assert f"e{music.ENCODING_VERSION}-music21-{importlib.metadata.version('music21')}" in path.name
    assert music.cache_path(tmp_path / "arg").parent == tmp_path / "arg" / "music"
    monkeypatch.setattr(music, "chorale_paths", list)
    monkeypatch.setattr(music, "encode_files", lambda paths: pieces)  # what a parse of the corpus would give
    loaded = music.load_pieces()  # no cache yet: built and written
    assert path.is_file() and {k: v.tolist() for k, v in loaded.items()} == {k: v.tolist() for k, v in pieces.items()}
    monkeypatch.setattr(music, "encode_files", lambda paths: pytest.fail("the cache was not used"))
    assert music.load_pieces()["bwv2.6"].tolist() == EVENTS[:8]
    path.write_bytes(b"not an npz")  # a damaged cache is rebuilt
    monkeypatch.setattr(music, "encode_files", lambda paths: {"bwv3.6": np.array(EVENTS, np.int16)})
    assert list(music.load_pieces()) == ["bwv3.6"] and list(music.read_pieces(path)) == ["bwv3.6"]


def test_missing_music21_names_the_extra(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(UserError, match=r"pip install 'perceivers\[music\]'"):
        music.cache_path()
    monkeypatch.setitem(sys.modules, "music21", None)
    with pytest.raises(UserError, match=r"needs music21.*perceivers\[music\]"):
        music.import_music21()


def test_a_cache_folder_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")  # a file where the cache folder should be: mkdir fails
    monkeypatch.setattr(music, "chorale_paths", list)
    monkeypatch.setattr(music, "encode_files", lambda paths: {"bwv1.6": np.array(EVENTS, np.int16)})
    with pytest.warns(UserWarning, match="could not cache the encoded chorales"):
        pieces = music.load_pieces(tmp_path / "file")
    assert list(pieces) == ["bwv1.6"]
