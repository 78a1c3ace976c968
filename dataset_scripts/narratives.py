"""Convert Narratives (OpenNeuro ds002345) into the wav2brain Hugging Face layout.

    python dataset_scripts/narratives.py /data/narratives --out narratives-hf --tasks pieman tunnel

A thin wrapper over :func:`wav2brain.data.prepare.prepare_dataset`: the stimulus of each run is the
``events.tsv`` row with ``trial_type == "story"``; the TR comes from each run's ``*_bold.json``
(1.5 s, 1.52 s for milkyway-synonyms). The card text is ``cards/narratives.md``.

The authors' exclusion list (``code/scan_exclude.json`` of the ``snastase/narratives`` repository,
kept as ``data/narratives_scan_exclude.json``, source in ``data/SOURCE.md``) is applied by
default: 27 scans, among them both prettymouth runs whose events disagree about where the story
starts in the WAV. ``--keep-excluded`` keeps them; ``--exclude FILE`` replaces the list.

Derivatives: the DataLad release (``snastase/narratives``) ships fMRIPrep 1.5 output under
``derivatives/fmriprep`` and the authors' AFNI-cleaned images under ``derivatives/afni-nosmooth``.
When they are present they are used (``--derivative``, default ``preproc``; ``--space``, default
``MNI152NLin2009cAsym``, or ``fsaverage6`` for surfaces):

* ``preproc`` (default): fMRIPrep's ``desc-preproc`` images with their brain masks, and, unless
  ``--confounds``/``--confounds-strategy`` say otherwise, the authors' own confound model
  (:data:`NARRATIVES_CONFOUNDS`: 6 motion parameters, fMRIPrep's cosine basis, 5 aCompCor
  components each from the CSF and the white-matter masks, as in their ``extract_confounds.py``)
  regressed here with nilearn's ``load_confounds``. This is the default because every step is then
  recorded in the card and regressed on the same trimmed volumes as the detrending and z-scoring,
  the strategy can be changed, and the surface data are not tied to a hard-coded TR.
* ``clean``: the authors' ``desc-clean`` images (the same confounds plus a quadratic trend removed
  by AFNI ``3dTproject`` over the whole run, before any trimming; surfaces with ``-TR 1.5`` for every
  story, although milkyway-synonyms was scanned at 1.52 s), with fMRIPrep's brain masks. No
  confounds are regressed again (asking for them is an error).
* ``none``: the raw BIDS images.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wav2brain.commands.prepare import add_prepare_arguments, prepare_from_args
from wav2brain.data.confounds import ConfoundStrategy
from wav2brain.data.hf_layout import CardText

CARD = Path(__file__).with_name("cards") / "narratives.md"
SCAN_EXCLUDE = Path(__file__).with_name("data") / "narratives_scan_exclude.json"
"""The authors' published exclusion list (snastase/narratives ``code/scan_exclude.json``)."""

NARRATIVES_CONFOUNDS = ConfoundStrategy(
    strategy=("motion", "high_pass", "compcor"),
    motion="basic",
    compcor="anat_separated",
    n_compcor=5,
)
"""The authors' confound model (``code/extract_confounds.py``): trans/rot x/y/z, cosines,
5 aCompCor components per CSF and white-matter mask."""


def derivative_options(args: argparse.Namespace) -> dict:
    """Point the generic options at the release's derivatives (module docstring); extra kwargs.

    An explicit ``--derivatives`` wins. Returns the keyword arguments for ``prepare_dataset``
    that the generic options cannot express (the authors' confound strategy).

    Raises
    ------
    FileNotFoundError
        ``--derivative clean`` without ``derivatives/afni-nosmooth``.
    ValueError
        Confounds asked for with ``--derivative clean``.
    """
    if args.derivatives is not None or args.derivative == "none":
        return {}
    fmriprep = args.bids_root / "derivatives" / "fmriprep"
    asked = args.confounds is not None or args.confounds_strategy is not None
    if args.derivative == "preproc":
        if not fmriprep.is_dir():
            print(f"no {fmriprep}: using the raw BIDS images", file=sys.stderr)
            return {}
        args.derivatives = fmriprep
        return {} if asked else {"confounds_strategy": NARRATIVES_CONFOUNDS}
    afni = args.bids_root / "derivatives" / "afni-nosmooth"
    if not afni.is_dir():
        raise FileNotFoundError(f"--derivative clean needs {afni} (datalad get it)")
    if asked:
        raise ValueError(
            "--derivative clean images already have the authors' confounds regressed; "
            "drop --confounds/--confounds-strategy, or use --derivative preproc"
        )
    args.derivatives, args.derivatives_desc = afni, "clean"
    if args.derivatives_masks is None and fmriprep.is_dir():
        args.derivatives_masks = fmriprep
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, prepare the folder, print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prepare_arguments(parser, root_help="root of the ds002345 BIDS dataset")
    parser.add_argument(
        "--keep-excluded",
        action="store_true",
        help=f"keep the scans of the authors' exclusion list ({SCAN_EXCLUDE.name})",
    )
    parser.add_argument(
        "--derivative",
        choices=("preproc", "clean", "none"),
        default="preproc",
        help="images to use when the release's derivatives are present: fMRIPrep desc-preproc "
        "with the authors' confound model regressed here (default), the authors' AFNI "
        "desc-clean, or the raw BIDS images",
    )
    args = parser.parse_args(argv)
    if args.keep_excluded and args.exclude is not None:
        parser.error("--keep-excluded and --exclude contradict each other; give one")
    extra = derivative_options(args)
    card = CardText(
        pretty_name="Narratives (ds002345) audio-fMRI",
        license="cc0-1.0",
        source=CARD.read_text(encoding="utf-8"),
    )
    exclude = None if args.keep_excluded else SCAN_EXCLUDE
    print(prepare_from_args(args, card=card, exclude=exclude, **extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
