'use strict';
// Starts hearth through the sidecar module and holds it until this process is killed, as an app
// that crashes would: scripts/windows-test kills this process (SIGKILL of its Wine process, no
// handler runs) and checks that hearth exits on its own. Prints `READY <hearth pid> <pipe>` once
// hearth is up. Environment: HEARTH_BIN, HEARTH_DATA_DIR, HEARTH_MODELS_DIR.
const { startHearth } = require('../../packaging/electron/hearth-sidecar.js');

const args = ['--threads', '1'];
if (process.env.HEARTH_MODELS_DIR) args.push('--models-dir', process.env.HEARTH_MODELS_DIR);
startHearth({ binary: process.env.HEARTH_BIN, dataDir: process.env.HEARTH_DATA_DIR, args, onLog: () => {} }).then(
  (hearth) => {
    process.stdout.write(`READY ${hearth.pid} ${hearth.socket}\n`);
    setInterval(() => {}, 1 << 30);
  },
  (err) => {
    process.stderr.write(`${err.code || ''} ${err.message}\n`);
    process.exit(1);
  },
);
