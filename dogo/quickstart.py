"""Run the main job: SimCLR alone vs DoGo on Fashion-MNIST, then print and draw the comparison."""


def add_arguments(parser):
    parser.set_defaults(func=lambda args: 0)
