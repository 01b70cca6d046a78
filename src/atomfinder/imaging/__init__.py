"""HRTEM imaging (needs the ``simulate`` extra: abTEM): microscope, exit waves, lens, detector."""
