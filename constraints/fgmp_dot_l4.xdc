# fgmp_dot_l4: clock and I/O timing for Vivado, out-of-context synthesis of the unit (synth_design -mode out_of_context).
# Written by `fgmp constraints` for 100 MHz (constraints/README.md); the ports are the Verilog's.
# Every port faces a register of the surrounding system, which keeps 20% of the period
# on its side of the port; the unit gets the rest. rst is synchronous, so it is timed like data.
# Out of context there are no pins: the clock net is ideal until the unit is placed in a top.
create_clock -name clk -period 10.000 [get_ports clk]
set_input_delay -clock clk 2.000 [get_ports {i__payload[*] i__valid o__ready rst}]
set_output_delay -clock clk 2.000 [get_ports {i__ready o__payload[*] o__valid}]
