"""A Modbus/TCP client (pymodbus) standing for a vendor's engineering
tool: reads holding registers 0-3 of unit 1 at 127.0.0.1:PORT, writes 42
to register 5 (printing `write refused CODE` if answered with an
exception) and reads it back, printing each result, then polls
register 0 every 100 ms, printing `lost` and exiting when a request fails
(the connection was cut). Stops after SECONDS (default 60) with `timeout`.

    python modbus_operator.py PORT [SECONDS]
"""

import sys
import time

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException


def main(port: int, seconds: float) -> int:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    if not client.connect():
        print("lost: cannot connect", flush=True)
        return 0
    try:
        rr = client.read_holding_registers(0, count=4, device_id=1)
        print("read", *rr.registers, flush=True)
        wr = client.write_register(5, 42, device_id=1)
        if wr.isError():
            print("write refused", wr.exception_code, flush=True)
        rr = client.read_holding_registers(5, count=1, device_id=1)
        print("register 5 is", *rr.registers, flush=True)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            rr = client.read_holding_registers(0, count=1, device_id=1)
            if rr.isError():
                print("lost:", rr, flush=True)
                return 0
            time.sleep(0.1)
    except (ModbusException, OSError, AttributeError) as e:
        print("lost:", type(e).__name__, flush=True)
        return 0
    finally:
        client.close()
    print("timeout", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 60))
