// Shows each offload-planner node's plan summary (its `ui.text`) on the node itself, in a
// read-only text box under its widgets, whenever the node has run.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const SUMMARY = "plan_summary";

app.registerExtension({
  name: "offload_planner.plan_summary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("OffloadPlan")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      let widget = this.widgets?.find((w) => w.name === SUMMARY);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, SUMMARY, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.serialize = false; // shown, never saved into the workflow
      }
      widget.value = (message?.text ?? []).join("\n");
    };
  },
});
