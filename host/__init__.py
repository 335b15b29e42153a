"""tessera.host: run models on a mix of devices.

- :mod:`tessera.host.device`: the asynchronous device API (:class:`~tessera.host.device.Device`),
  buffers, link models and modelled timelines;
- :mod:`tessera.host.torch_device`, :mod:`tessera.host.fpga`: torch (CUDA or CPU), the FPGA
  engines emulated bit-exactly, and their HLS kernels C-simulated;
- :mod:`tessera.host.graph`, :mod:`tessera.host.m3vit`: op graphs with integer formats, and the
  M³ViT as one;
- :mod:`tessera.host.torch_import`: plain torch modules (MLPs, transformer blocks) traced with
  ``torch.fx`` into such graphs (:func:`~tessera.host.torch_import.import_torch`);
- :mod:`tessera.host.partition`: placement from the cost model;
- :mod:`tessera.host.session`, :mod:`tessera.host.pool`: sessions with fail-over, and an
  exactly-once device pool;
- :mod:`tessera.host.ray_pool`: any device hosted in a Ray actor (``ray:SPEC``), for more devices
  than one host has;
- :mod:`tessera.host.driver`, :mod:`tessera.host.sim_board`: the board-driver contract and a
  cocotb-simulated board that runs the drivers on the RTL;
- :mod:`tessera.host.demo`: the end-to-end demo (``tessera demo``).
"""
