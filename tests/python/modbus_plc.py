"""A Modbus/TCP server standing for a PLC (pymodbus): 16 holding registers
holding 100, 101, ... at addresses 0-15, unit id 1, on 127.0.0.1:PORT.
Prints `listening` once it accepts connections.

    python modbus_plc.py PORT
"""

import asyncio
import logging
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


async def main(port: int) -> None:
    device = SimDevice(
        id=1,
        simdata=[
            SimData(
                address=0,
                values=[100 + i for i in range(16)],
                datatype=DataType.REGISTERS,
            )
        ],
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    print("listening", flush=True)
    await task


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(int(sys.argv[1])))
