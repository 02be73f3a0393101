// A second, independent TUF client: tuf-js refreshes a device's trusted metadata from the files a
// gateway served. Usage: node refresh.js METADATA_DIR SERVED_DIR
// METADATA_DIR keeps the client's trusted metadata between runs (bootstrapped from
// SERVED_DIR/1.root.json); SERVED_DIR holds N.root.json, timestamp.json, snapshot.json and
// targets.json as the gateway answered them. Prints one JSON line: the trusted versions and target
// names, or the error tuf-js raised (and exits 1).
"use strict";
const fs = require("fs");
const path = require("path");
const { Readable } = require("stream");
const { Updater, BaseFetcher } = require("tuf-js");
const { DownloadHTTPError } = require("tuf-js/dist/error");

const BASE = "https://gateway.test/repo/";

class ServedFilesFetcher extends BaseFetcher {
  constructor(dir) {
    super();
    this.dir = dir;
  }

  async fetch(url) {
    const name = url.startsWith(BASE) ? url.slice(BASE.length) : "";
    const file = path.join(this.dir, path.basename(name));
    if (!name || name !== path.basename(name) || !fs.existsSync(file)) {
      throw new DownloadHTTPError(`${name || url} not found`, 404);
    }
    return Readable.toWeb(fs.createReadStream(file));
  }
}

function trusted(dir, role) {
  const file = path.join(dir, `${role}.json`);
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")).signed : null;
}

async function main() {
  const [metadataDir, servedDir] = process.argv.slice(2);
  fs.mkdirSync(metadataDir, { recursive: true });
  if (!fs.existsSync(path.join(metadataDir, "root.json"))) {
    fs.copyFileSync(path.join(servedDir, "1.root.json"), path.join(metadataDir, "root.json"));
  }
  const updater = new Updater({
    metadataDir,
    metadataBaseUrl: BASE,
    fetcher: new ServedFilesFetcher(servedDir),
  });
  try {
    await updater.refresh();
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: error.constructor.name, message: String(error.message) }));
    process.exit(1);
  }
  const versions = {};
  for (const role of ["root", "timestamp", "snapshot", "targets"]) {
    versions[role] = (trusted(metadataDir, role) || {}).version ?? null;
  }
  const targets = Object.keys((trusted(metadataDir, "targets") || { targets: {} }).targets).sort();
  console.log(JSON.stringify({ ok: true, versions, targets }));
}

main();
