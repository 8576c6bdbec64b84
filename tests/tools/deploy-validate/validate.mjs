// Validates a ServiceMonitor manifest with @kubernetes-models/prometheus-operator (the Prometheus
// Operator CRD's JSON schema); exits 1 naming what is wrong.
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const doc = parse(readFileSync(process.argv[2], "utf8"));
if (doc.apiVersion !== ServiceMonitor.apiVersion || doc.kind !== ServiceMonitor.kind) {
  console.log(`not a ${ServiceMonitor.apiVersion} ${ServiceMonitor.kind}: ${doc.apiVersion} ${doc.kind}`);
  process.exit(1);
}
try {
  new ServiceMonitor(doc).validate();
} catch (e) {
  console.log(`invalid ServiceMonitor: ${e.message}`);
  process.exit(1);
}
console.log(`ServiceMonitor ${doc.metadata.name} valid against the Prometheus Operator schema`);
