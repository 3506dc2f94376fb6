"""Every component id of the page, in one place: kebab-case, prefixed by the panel that owns it.

Callbacks, layouts, ``assets/*.js`` and the browser tests all refer to ids through this module
(the JS reads them from ``window.layerscope.ids``, published by ``registry.shared_with_browser``),
so renaming one is a one-line change. Pattern-matching ids are built by functions.
"""

from __future__ import annotations

from typing import Any

# ---- page-wide --------------------------------------------------------------------------------
URL = "app-url"
SELECTION = "app-selection"  # the one shared selection store (see dashboard/state.py)
VIEW_KEY = "app-view-key"  # (run, layer, subset, method, perplexity, colour): embedding input
LAYER_KEY = "app-layer-key"  # (run, layer): model view input
SAMPLE_KEY = "app-sample-key"  # (run, layer, pinned): activations input
RUN_KEY = "app-run-key"  # run id: per-run tables
RUN_VERSION = "app-run-version"  # changes with what the run can show (RunData.contents_keys)
# The same, one store per aspect of the run (RunData.contents_keys), each changed only when its
# aspect or the run is (about.py's runAspects): a panel follows its aspect's.
RUN_LAYERS_VERSION = "app-run-layers-version"  # the architecture, the layer list, the subsets
RUN_SAMPLES_VERSION = "app-run-samples-version"  # predictions, explanations, label issues
RUN_MAPS_VERSION = "app-run-maps-version"  # the embedding maps and their colourings
RUN_ASPECT_VERSIONS = {
    "layers": RUN_LAYERS_VERSION,
    "samples": RUN_SAMPLES_VERSION,
    "maps": RUN_MAPS_VERSION,
}
RUN_PROGRESS = "app-run-progress"  # every manifest change: the About panel's progress
POLL = "app-poll"
ALERTS = "app-alerts"
STATUS = "app-status"  # navbar badge: complete / precompute running
URL_SINK = "app-url-sink"  # no-output side effects (history.replaceState)
APP_TOKEN = "app-token"  # which app (data dir) this page belongs to, for background callbacks
RUN_NOTE = "app-run-note"  # "precompute still running: ready ..., not ready ..."

# ---- controls -------------------------------------------------------------------------------
CONTROLS_CARD = "controls-card"
CONTROLS_RUN = "controls-run"
CONTROLS_RUN_POLL = "controls-run-poll"  # re-lists the runs while the page is open
CONTROLS_SUBSET = "controls-subset"
CONTROLS_METHOD = "controls-method"
CONTROLS_PERPLEXITY = "controls-perplexity"
CONTROLS_COLOR = "controls-color"

# ---- model view -----------------------------------------------------------------------------
MODEL_CARD = "model-card"
MODEL_GRAPH = "model-graph"
MODEL_INFO = "model-info"
MODEL_LAYER = "model-layer"
MODEL_PREV = "model-prev"
MODEL_NEXT = "model-next"
MODEL_EXPAND_ALL = "model-expand-all"
MODEL_COLLAPSE_ALL = "model-collapse-all"
MODEL_EXPANDED = "model-expanded"
# The architecture for papers (dashboard/routes.py serves it): links and the blocks choice
MODEL_EXPORT = "model-export"  # the group of export controls (hovering it warms the renderer)
MODEL_EXPORT_COLLAPSED = "model-export-collapsed"
MODEL_EXPORT_SVG = "model-export-svg"
MODEL_EXPORT_PDF = "model-export-pdf"
MODEL_EXPORT_NOTE = "model-export-note"  # why export is unavailable, when it is

# ---- embedding ------------------------------------------------------------------------------
EMBEDDING_CARD = "embedding-card"
EMBEDDING_GRAPH = "embedding-graph"
EMBEDDING_DATA = "embedding-data"
EMBEDDING_MESSAGE = "embedding-message"
# The optional 3-D view: the switch, the 3-D t-SNE job's request and answer, its status line
EMBEDDING_3D = "embedding-3d"
EMBEDDING_3D_REQUEST = "embedding-3d-request"  # {run, version, layer, subset, perplexity}
EMBEDDING_3D_READY = "embedding-3d-ready"  # {request, error}: the job's answer
EMBEDDING_3D_STATUS = "embedding-3d-status"  # "computing 3-D t-SNE…" while the job runs

# ---- inspector ------------------------------------------------------------------------------
INSPECTOR_CARD = "inspector-card"
INSPECTOR_TABLE = "inspector-table"  # per-run rows for the clientside hover
INSPECTOR_RUN_INFO = "inspector-run-info"  # URL templates and what exists
INSPECTOR_SHOWN = "inspector-shown"  # the row the inspector shows right now
INSPECTOR_CLASS = "inspector-class"  # explanations computed for a clicked class
INSPECTOR_IMAGE = "inspector-image"
INSPECTOR_UID = "inspector-uid"
INSPECTOR_LABELS = "inspector-labels"
INSPECTOR_HINT = "inspector-hint"
INSPECTOR_TOP10 = "inspector-top10"  # the top-10 bars, drawn by assets/inspector.js
INSPECTOR_CLASS_REQUEST = "inspector-class-request"  # {cls, name} of the clicked bar
INSPECTOR_EXPLAIN_CAPTION = "inspector-explain-caption"
INSPECTOR_EXPLAIN_STATUS = "inspector-explain-status"
INSPECTOR_UNPIN = "inspector-unpin"
# The explanation controls (dashboard/panels/explain.py, assets/explain.js)
EXPLAIN_CLASS = "explain-class"  # searchable class picker; None = the predicted class
EXPLAIN_PREDICTED = "explain-predicted"
EXPLAIN_TRUE = "explain-true"
EXPLAIN_METHODS = "explain-methods"  # which registered methods are shown
EXPLAIN_LAYER = "explain-layer"  # "Grad-CAM layer: ..." line
EXPLAIN_USE_SELECTED_LAYER = "explain-use-selected-layer"
# {run, row, cls, name, layer, methods}: what the quick / the slow job computes
EXPLAIN_REQUEST_QUICK = "explain-request-quick"
EXPLAIN_REQUEST_SLOW = "explain-request-slow"
EXPLAIN_SLOW = "explain-slow"  # the slow job's answer, as INSPECTOR_CLASS is the quick one's
# {quick, slow}: both answers, written only by set_props (see deliverAnswers in explain.js)
EXPLAIN_ANSWERS = "explain-answers"
EXPLAIN_ANSWERS_SINK = "explain-answers-sink"
EXPLAIN_PROGRESS_ROW = "explain-progress-row"
EXPLAIN_PROGRESS = "explain-progress"
EXPLAIN_CANCEL = "explain-cancel"
EXPLAIN_LEGEND = "explain-legend"  # + "-heat" / "-signed": one legend per display kind
# Filled by assets/explain.js: one figure per registered method, "explain-figure-<method>" with
# "explain-image-<method>" and "explain-note-<method>" inside.
EXPLAIN_FIGURES = "explain-figures"
EXPLAIN_OCCLUSION = "explain-occlusion"  # occlusion's probability table


# ---- the user's own images (dashboard/panels/uploads.py) -------------------------------------

UPLOAD_CARD = "upload-card"
UPLOAD_DROP = "upload-drop"
UPLOAD_LIST = "upload-list"
UPLOAD_MESSAGE = "upload-message"
UPLOAD_SESSION = "upload-session"  # this tab's random upload session
UPLOADS = "uploads"  # [{id, name, thumb, top_idx, top_prob, pred}] for the current run
UPLOAD_VIEW = "upload-view"  # the view on screen, set only while there are uploads
UPLOAD_POINTS = "upload-points"  # {view, points: [{id, name, x, y}]} in the map on screen
UPLOAD_PICK_TYPE = "upload-pick"  # {"type": UPLOAD_PICK_TYPE, "id": upload id} buttons
UPLOAD_PLACEMENT_NOTE = "upload-placement-note"  # why the uploads are not in this map


# ---- the workbench (dashboard/panels/workbench.py: confusion, metrics, data quality;
# dashboard/panels/gallery.py: the selection, its gallery, relabelling, downloads) -------------
WORKBENCH_CARD = "workbench-card"
WORKBENCH_TABS = "workbench-tabs"
GALLERY_CARD = "gallery-card"
SEL_KEY = "workbench-sel-key"  # {run, sel}: the selection spec, split out of SELECTION
SELECTION_ROWS = "workbench-selection-rows"  # {run, sel, rows, count, description, ...}
CONFUSION_GRAPH = "confusion-graph"
CONFUSION_NORMALISE = "confusion-normalise"
CONFUSION_ORDER = "confusion-order"
CONFUSION_SPLIT = "confusion-split"
CONFUSION_MESSAGE = "confusion-message"
METRICS_SUMMARY = "metrics-summary"
METRICS_TABLE = "metrics-table"
METRICS_CLASS_TYPE = "metrics-class"  # {"type": METRICS_CLASS_TYPE, "cls": i} class buttons
QUALITY_INFO = "quality-info"
QUALITY_THRESHOLD = "quality-threshold"
QUALITY_SHOW_ISSUES = "quality-show-issues"
QUALITY_SHOW_DUPLICATES = "quality-show-duplicates"
QUALITY_SHOW_OUTLIERS = "quality-show-outliers"
QUALITY_SHOW_CORRECTED = "quality-show-corrected"
FILTER_TRUE = "filter-true"
FILTER_PRED = "filter-pred"
FILTER_CORRECT = "filter-correct"
FILTER_SPLIT = "filter-split"
FILTER_LOSS = "filter-loss"
SELECTION_TEXT = "selection-text"
SELECTION_CLEAR = "selection-clear"
SELECTION_NAME = "selection-name"
SELECTION_SAVE = "selection-save"
SELECTION_SAVED = "selection-saved"  # menu of the run's saved selections
SELECTION_MESSAGE = "selection-message"
GALLERY = "gallery"  # filled by assets/gallery.js
GALLERY_SORT = "gallery-sort"
GALLERY_PAGE = "gallery-page"  # store: page index
GALLERY_PREV = "gallery-prev"
GALLERY_NEXT = "gallery-next"
GALLERY_PAGE_TEXT = "gallery-page-text"
GALLERY_HOVER = "gallery-hover"  # store: the gallery thumbnail under the mouse, for the inspector
GALLERY_PIN = "gallery-pin"  # store: {row, n} of the thumbnail clicked last
RELABEL_CLASS = "relabel-class"
RELABEL_PINNED = "relabel-pinned"
RELABEL_SELECTION = "relabel-selection"
RELABEL_ACCEPT = "relabel-accept"
RELABEL_CLEAR = "relabel-clear"
RELABEL_UNDO = "relabel-undo"
RELABEL_STATUS = "relabel-status"
CORRECTIONS = "corrections"  # store: {run, count, stamp}: bumps when corrections change
EXPORT_SELECTION_CSV = "export-selection-csv"
EXPORT_SELECTION_PARQUET = "export-selection-parquet"
EXPORT_CORRECTIONS = "export-corrections"
EXPORT_METRICS = "export-metrics"
EXPORT_CONFUSION = "export-confusion"
EXPORT_DOWNLOAD = "export-download"


# ---- activations ----------------------------------------------------------------------------
ACTIVATIONS_CARD = "activations-card"
ACTIVATIONS_GRAPH = "activations-graph"
ACTIVATIONS_SORT = "activations-sort"
ACTIVATIONS_HEADER = "activations-header"
ACTIVATIONS_MESSAGE = "activations-message"
ACTIVATIONS_MODAL = "activations-modal"
ACTIVATIONS_MODAL_TITLE = "activations-modal-title"
ACTIVATIONS_MODAL_GRAPH = "activations-modal-graph"

# ---- figure downloads (components/figure_download.py, assets/figure_download.js) -----------
# {"type": FIGURE_DOWNLOAD, "graph": <graph id>, "format": "png" | "svg"}: the buttons
FIGURE_DOWNLOAD = "figure-download"
# {"type": FIGURE_DOWNLOAD_TARGET, "graph": <graph id>}: what to save, {graph, filename, scale}
FIGURE_DOWNLOAD_TARGET = "figure-download-target"


def figure_download_button(graph: Any, fmt: str) -> dict[str, Any]:
    """Id of a figure download button; ``graph`` is a graph id or a wildcard (MATCH)."""
    return {"type": FIGURE_DOWNLOAD, "graph": graph, "format": fmt}


def figure_download_target(graph: Any) -> dict[str, Any]:
    return {"type": FIGURE_DOWNLOAD_TARGET, "graph": graph}


# ---- about and tour -------------------------------------------------------------------------
ABOUT_CARD = "about-card"
ABOUT_BODY = "about-body"
ABOUT_TRAINING = "about-training"
TOUR_START = "tour-start"
TOUR_CARD = "tour-card"
TOUR_TITLE = "tour-title"
TOUR_TEXT = "tour-text"
TOUR_STEP = "tour-step"
TOUR_STEPS = "tour-steps"
TOUR_NEXT = "tour-next"
TOUR_BACK = "tour-back"
TOUR_CLOSE = "tour-close"

# ---- the new-run page (/new) ----------------------------------------------------------------
EXPLORE_PAGE = "explore-page"  # the main grid, hidden on /new
NEW_PAGE = "new-page"
NEW_PAGE_BODY = "new-page-body"  # filled the first time /new is shown
NEW_LINK = "new-link"  # navbar: to /new and back
NEW_POLL = "new-poll"  # jobs list and the chosen job, while /new is shown
NEW_DATASET_SOURCE = "new-dataset-source"  # builtin | folder | upload
NEW_DATASET_BUILTIN = "new-dataset-builtin"
NEW_DATASET_FOLDER = "new-dataset-folder"
NEW_DATASET_FILE = "new-dataset-file"  # <input type=file>, sent by assets/new_run.js
NEW_DATASET_UPLOAD = "new-dataset-upload"  # store: {spec, summary} of the uploaded zip
NEW_DATASET_STATUS = "new-dataset-status"
NEW_MODEL_SOURCE = "new-model-source"  # preset | torchvision | upload
NEW_MODEL_PRESET = "new-model-preset"
NEW_MODEL_TORCHVISION = "new-model-torchvision"
NEW_MODEL_WEIGHTS = "new-model-weights"
NEW_MODEL_FINE_TUNE = "new-model-fine-tune"
NEW_MODEL_FILE = "new-model-file"
NEW_MODEL_UPLOAD = "new-model-upload"  # store: {spec, summary} of the uploaded TorchScript
NEW_MODEL_STATUS = "new-model-status"
NEW_TRAINING = "new-training"  # the training fields' box, hidden for untrained models
NEW_EPOCHS = "new-epochs"
NEW_BATCH_SIZE = "new-batch-size"
NEW_OPTIMIZER = "new-optimizer"
NEW_LR = "new-lr"
NEW_WEIGHT_DECAY = "new-weight-decay"
NEW_AUGMENT = "new-augment"
NEW_SEED = "new-seed"
NEW_EARLY_STOPPING = "new-early-stopping"
NEW_SAMPLES = "new-samples"
NEW_SUBSETS = "new-subsets"
NEW_PERPLEXITIES = "new-perplexities"
NEW_DEVICE = "new-device"
NEW_RUN_NAME = "new-run-name"
NEW_START = "new-start"
NEW_MESSAGE = "new-message"
NEW_JOBS = "new-jobs"  # the jobs list
NEW_JOB = "new-job"  # store: the id of the job shown in detail
NEW_JOB_TITLE = "new-job-title"
NEW_JOB_STAGES = "new-job-stages"
NEW_JOB_CURVES = "new-job-curves"
NEW_JOB_LOG = "new-job-log"
NEW_JOB_CANCEL = "new-job-cancel"
NEW_JOB_OPEN = "new-job-open"
NEW_JOB_ITEM = "new-job-item"  # pattern: {"type": NEW_JOB_ITEM, "job": <job id>}


def new_job_item(job: Any) -> dict[str, Any]:
    """Id of a row of the jobs list; ``job`` is a job id or a wildcard (ALL)."""
    return {"type": NEW_JOB_ITEM, "job": job}


def all_ids() -> dict[str, str]:
    """Every plain string id by constant name, for the browser (``window.layerscope.ids``)."""
    return {
        name: value
        for name, value in globals().items()
        if name.isupper() and isinstance(value, str)
    }
