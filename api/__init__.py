"""lensflow's read service (``lensflow api``): per-user HTTP access to the analysed images, with its
gallery. An edge above the runtime (``streams/``) and the stages (``agents/``); see docs/api.md."""
