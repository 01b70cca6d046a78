"""Time series: which atomic-column sites are occupied in each frame, and when that changes.

The chain (:func:`track` runs all of it)::

    frames ──► register_frames ──► drift (dx, dy) per frame
       │                               │
       └──► detect (per raw frame) ──► link_sites ──► Sites (first-frame grid)
            (detections + atom map)    │
                 site_probabilities (map value at every site, every frame)
                       │
                       presence (two-state HMM per site) ──► events ──► summary ──► CSV + plots + GIF

Conventions (DESIGN.md, "Time series output")
---------------------------------------------
* Positions are ``(x, y)`` = (column, row) in pixels, pixel centres at integers,
  origin at the centre of the top-left pixel.
* **Drift sign**: ``drift[i] = (dx, dy)`` means a feature at ``(x, y)`` in the
  reference frame (frame 0) is at ``(x + dx, y + dy)`` in frame ``i``. A detection at
  ``(x_i, y_i)`` in frame ``i`` is therefore at ``(x_i - dx, y_i - dy)`` in the first
  frame's grid, and every coordinate written by this module is in that grid.
* Registration (:func:`register_frames`, in :mod:`atomfinder.detection.registration`,
  the module focal series use too): band-pass; whole-pixel masked normalised
  cross-correlation (picks the right lattice peak from non-periodic content such as
  the particle outline); then sub-pixel Hann-windowed cross-correlation of the
  band-passed frames (upsampled DFT).
* Detection runs on the raw (unshifted) frames, so positions are never degraded by
  interpolation; only the overlay animation shows resampled, registered frames.

Linking (:func:`link_sites`) is frame-by-frame one-to-one assignment
(:func:`atomfinder.analysis.matching.match_positions`, i.e. connected components +
:func:`scipy.optimize.linear_sum_assignment`) of each frame's registered detections to
the running mean positions of the sites found so far, within ``tolerance_px``;
unmatched detections open new sites. A final pass merges sites closer than the
tolerance that are never detected in the same frame (a column whose first detections
were split by noise). The detections only make the sites (sites may also come from
elsewhere, e.g. a lattice model).

Presence is decided per site from its atom-map values over the whole series, not by
a threshold in each frame: the map is read at the site in *every* frame
(:func:`site_probabilities`, detected there or not), each value becomes a
log-likelihood ratio ``logit(p) - logit(threshold)`` (:func:`presence_evidence`),
and a two-state hidden Markov model (present/absent) with a cost in nats per change
of state is decoded by Viterbi (:func:`viterbi_states`). The default cost comes from
the frame-to-frame noise of the map values of mostly present sites
(:func:`switch_cost_from_noise`), so a noisier (lower-dose) series needs more
evidence for a change. Each event's confidence is the posterior probability of
that change from forward-backward (:func:`change_posteriors`). The decoder is
:mod:`atomfinder.analysis.presence` (pure NumPy); this package re-exports it.

Modules, by concept (this package re-exports every public name of each, and the
registration and presence-decoder API above, so ``from atomfinder.analysis.timeseries
import ...`` keeps working for all of them):

* :mod:`~atomfinder.analysis.timeseries.series`: loading and holding a series with
  its model (:func:`load_time_series`, :class:`TimeSeries`: the per-frame detector
  and its validity checks).
* :mod:`~atomfinder.analysis.timeseries.frames`: the stack check and each frame's
  detections (:class:`FrameDetection`, :func:`as_detections`, :func:`registered_xy`).
* :mod:`~atomfinder.analysis.timeseries.sites`: :class:`Sites`, :func:`link_sites`,
  :func:`refine_drift`, :func:`sites_in_view`.
* :mod:`~atomfinder.analysis.timeseries.occupancy`: map values at the sites,
  :func:`presence`, :func:`events`, :func:`summary`.
* :mod:`~atomfinder.analysis.timeseries.outputs`: the CSV/JSON tables, plots and GIF,
  and the output folder (earlier runs, staging, publishing).
* :mod:`~atomfinder.analysis.timeseries.tracking`: :func:`track`, which chains them.

This package never imports the simulation stack (imaging, structures, datasets,
abTEM, ase); it needs NumPy, SciPy, scikit-image, pandas, matplotlib and Pillow.
"""

from atomfinder.analysis.presence import (
    MIN_SWITCH_COST,
    change_posteriors,
    check_switch_cost,
    check_threshold,
    evidence_cap,
    presence_evidence,
    smooth_states,
    switch_cost_from_noise,
    viterbi_states,
)
from atomfinder.analysis.timeseries.frames import (
    FrameDetection,
    as_detections,
    as_frame_detection,
    check_frames,
    registered_xy,
)
from atomfinder.analysis.timeseries.occupancy import (
    EVENTS_COLUMNS,
    OCCUPANCY_COLUMNS,
    PRESENCE_COLUMNS,
    events,
    matched_probability,
    presence,
    presence_matrix,
    probability_matrix,
    sample_map,
    site_probabilities,
    summary,
)
from atomfinder.analysis.timeseries.outputs import (
    DRIFT_COLUMNS,
    GIF_MAX_FRAMES,
    GIF_MAX_SIDE,
    STAGING_PREFIX,
    STAGING_SUFFIX,
    TRACK_OUTPUTS,
    TRACK_UNITS,
    drift_table,
    earlier_outputs,
    gif_frame_indices,
    overlay_frames,
    plot_occupancy,
    plot_presence,
    publish_staged,
    refuse_earlier_outputs,
    remove_stale_staging,
    write_csv,
    write_gif,
    write_json,
)
from atomfinder.analysis.timeseries.series import TimeSeries, default_presence_threshold, load_time_series
from atomfinder.analysis.timeseries.sites import SITES_COLUMNS, Sites, link_sites, refine_drift, sites_in_view
from atomfinder.analysis.timeseries.tracking import TrackWarning, no_sites_reason, track
from atomfinder.detection.registration import (
    REGISTRATION_MODES,
    Registration,
    RegistrationWarning,
    bandpass,
    bin_image,
    coarse_bin,
    coarse_shift,
    frame_shift,
    hann_window,
    pair_shift,
    register_frames,
    register_images,
    register_series,
    smooth,
)


#: Every public name of the submodules, and the registration and presence-decoder API (the time-series API).
__all__ = [
    "as_detections",
    "as_frame_detection",
    "bandpass",
    "bin_image",
    "change_posteriors",
    "check_frames",
    "check_switch_cost",
    "check_threshold",
    "coarse_bin",
    "coarse_shift",
    "default_presence_threshold",
    "DRIFT_COLUMNS",
    "drift_table",
    "earlier_outputs",
    "events",
    "EVENTS_COLUMNS",
    "evidence_cap",
    "frame_shift",
    "FrameDetection",
    "gif_frame_indices",
    "GIF_MAX_FRAMES",
    "GIF_MAX_SIDE",
    "hann_window",
    "link_sites",
    "load_time_series",
    "matched_probability",
    "MIN_SWITCH_COST",
    "no_sites_reason",
    "OCCUPANCY_COLUMNS",
    "overlay_frames",
    "pair_shift",
    "plot_occupancy",
    "plot_presence",
    "presence",
    "PRESENCE_COLUMNS",
    "presence_evidence",
    "presence_matrix",
    "probability_matrix",
    "publish_staged",
    "refine_drift",
    "refuse_earlier_outputs",
    "register_frames",
    "register_images",
    "register_series",
    "registered_xy",
    "Registration",
    "REGISTRATION_MODES",
    "RegistrationWarning",
    "remove_stale_staging",
    "sample_map",
    "site_probabilities",
    "Sites",
    "SITES_COLUMNS",
    "sites_in_view",
    "smooth",
    "smooth_states",
    "STAGING_PREFIX",
    "STAGING_SUFFIX",
    "summary",
    "switch_cost_from_noise",
    "TimeSeries",
    "track",
    "TRACK_OUTPUTS",
    "TRACK_UNITS",
    "TrackWarning",
    "viterbi_states",
    "write_csv",
    "write_gif",
    "write_json",
]
