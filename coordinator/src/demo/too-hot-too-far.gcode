; A file that must never reach a printer: the hotend is set hotter than any
; generic-marlin-220 may go, and the last moves leave its 220 x 220 mm bed.
; filament_type = PLA
G21
G90
M82
M140 S60
M104 S300
G28
M190 S60
M109 S300
G92 E0
G1 Z0.3 F600
G1 X10 Y10 F6000
G1 X250 Y10 E12 F1200
G1 X250 Y260 E24
M104 S0
M140 S0
M84
