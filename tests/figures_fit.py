"""A check shared by the plot tests: everything drawn lies inside the figure, so a plain
``savefig`` (no ``bbox_inches="tight"``) clips nothing."""


def drawn_inside_figure(figure) -> bool:
    figure.canvas.draw()
    drawn = figure.get_tightbbox(figure.canvas.get_renderer())  # inches
    width, height = figure.get_size_inches()
    slack = 1e-3
    return (
        drawn.x0 >= -slack
        and drawn.y0 >= -slack
        and drawn.x1 <= width + slack
        and drawn.y1 <= height + slack
    )
