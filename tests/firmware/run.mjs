// Run a MicroPython script under the real MicroPython (npm @micropython/micropython-webassembly-pyscript).
// usage: node run.mjs SCRIPT.py [HOSTDIR:MPDIR ...]
// Copies each host directory's .py files into MicroPython's filesystem, then runs the script.
// A script's `asyncio.run(main())` runs main() as a task on Node's event loop (the
// webassembly port's asyncio) and the runner waits for it. Exit status 0 on success; on a
// Python exception, its traceback goes to stderr and the status is 1.
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript/micropython.mjs";

const [script, ...mounts] = process.argv.slice(2);
const mp = await loadMicroPython({
  heapsize: 4 * 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});

function mkdirs(dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { mp.FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}

for (const mount of mounts) {
  const [host, target] = mount.split(":");
  mkdirs(target);
  for (const name of fs.readdirSync(host)) {
    if (name.endsWith(".py")) {
      mp.FS.writeFile(path.posix.join(target, name), fs.readFileSync(path.join(host, name)));
    }
  }
}

// asyncio.run(main()) starts main() as a task; when it ends the runner exits with 0, or
// prints the traceback and exits with 1.
mp.runPython(`
import asyncio, sys, js

def _soundmon_run(coro):
    async def runner():
        try:
            await coro
        except BaseException as exc:
            sys.print_exception(exc)
            js.process.exit(1)
        js.process.exit(0)
    asyncio.create_task(runner())

asyncio.run = _soundmon_run
`);
try {
  mp.runPython(fs.readFileSync(script, "utf8"));
} catch (error) {
  if (error.name !== "PythonError") throw error;
  process.stderr.write(error.message + "\n");
  process.exit(1);
}
// a script without asyncio.run(): done once Node has nothing left to do (exit status 0)
