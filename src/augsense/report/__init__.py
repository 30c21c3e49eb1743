"""augsense.report: the HTML report of a run folder and its figures.

``augsense.report.html.write_report(run_dir)`` writes ``run_dir/report.html`` (self-contained) and
``run_dir/figures/*.png|svg``; ``augsense report RUN_DIR`` on the command line.
"""
