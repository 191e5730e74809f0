"""Plotting and analysis helpers for the notebooks (matplotlib). Import the module you need:

    from d2v_mini.viz.diagram import draw_overview        # the data2vec idea in one picture (00)
    from d2v_mini.viz.masks import ...                     # masks on spectrograms, images, tokens; ratios (01)
    from d2v_mini.viz.targets import ...                   # layer statistics, PCA / cosine / neighbours (02)
    from d2v_mini.viz.training import plot_curves, ...     # a run's curves, probes, predictions (03-05)
    from d2v_mini.viz.transfer import plot_transfer, ...   # the learning benchmark: margins, error bars (03-05)
"""
