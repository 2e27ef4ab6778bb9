"""The study's baselines and ablations, one module each: ``formulas`` (Table 1's fusion
formulas), ``cem`` (CEM-1/2), ``td3`` (TD3-1/2 and BatchRL-MTF-1/2) and ``myopic`` (xMTF w/o
outer stage)."""
