"""The results committed with the course, installed as the package data ``adcourse.stored_results``.

``pyproject.toml`` maps this folder (``book/results/`` of the repository) to that package, so every
installation of ``adcourse`` carries one copy of these files. Read them with
``adcourse.results.load_stored("quick/bench_quick_textures_brick.json")``; ``README.md`` here says
what each file holds.
"""
