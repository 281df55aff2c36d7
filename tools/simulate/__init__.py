"""`meshelect simulate`: meshelect's leader rotation against LEACH, HEED and SEP.

A round-based simulator of the clustering literature's kind: nodes on a field send one reading
per round, to the sink directly or through an aggregator (a cluster head, or meshelect's
leader), and spend energy by an energy model until they die. Modules:

- ``energy``: the first-order radio model and a time-based ESP32 model;
- ``field``: node positions, initial energies, distances, meshes by position;
- ``literature``: LEACH, SEP and HEED head selection;
- ``rotation``: meshelect's score rotation (the real core's score and handoff rule), a static
  aggregator, and direct transmission;
- ``run``: the round loop, the setups, and lifetimes (FND/HND/LND) per scheme and seed;
- ``report``: the table (Markdown and CSV) and the plots (PNG and SVG);
- ``cli``: the ``meshelect simulate`` command.

The model and every choice in it are described in docs/simulate.md.
"""
