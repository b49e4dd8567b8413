"""MergeLab: build the page from ui/ panels and launch it.

    python app.py                          # http://127.0.0.1:7860, local folders allowed
    python app.py --host 0.0.0.0 --hosted  # shared server / Space: paths confined to ./models, uploads limited
"""

from __future__ import annotations

import argparse
import logging
import os

from merging.debris import clean_debris
from ui.hosting import HostConfig, hosted_from_env
from ui.models_panel import start_default_family_build
from ui.page import CSS, build_page

QUEUE_CONCURRENCY = int(os.environ.get("MERGELAB_CONCURRENCY", "4"))  # events of one kind running at once
QUEUE_MAX_SIZE = int(os.environ.get("MERGELAB_QUEUE_SIZE", "64"))  # beyond this, new users are told to retry


def create_app(config: HostConfig | None = None):
    """The page with its queue set up; tests launch it themselves. Killed merges' hidden folders (from before this
    start) are cleaned first."""
    config = config or HostConfig.detect()
    for action in clean_debris(config.models_dir):
        logging.getLogger("mergelab").warning("start-up: %s", action)
    demo = build_page(config)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo


def launch_options(config: HostConfig) -> dict:
    """demo.launch's settings that follow from the host: the upload limit, no tracebacks shown, and the session
    downloads folder (inside the models folder) as a place gradio may serve files from, wherever the app is started
    (gradio otherwise allows only the working directory and the temp folder)."""
    return {"max_file_size": config.max_upload, "show_error": False, "allowed_paths": [str(config.downloads_dir)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MergeLab: a model-merging workbench in the browser.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--hosted", action="store_true", default=hosted_from_env(),
                        help="confine local paths to ./models, limit uploads, hide server paths in errors")
    args = parser.parse_args(argv)
    config = HostConfig.detect(hosted=args.hosted)
    config.models_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(config.environment())  # before the page is built: gradio reads its upload folder then
    start_default_family_build()  # first start: the default real family builds while the page comes up
    demo = create_app(config)
    demo.launch(server_name=args.host, server_port=args.port, css=CSS, **launch_options(config))


if __name__ == "__main__":
    main()
