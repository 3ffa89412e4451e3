from econ_scenes.cli import main

main()
