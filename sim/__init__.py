"""cocotb benches that drive the generated Verilog on Icarus and Verilator and compare with the golden model."""
