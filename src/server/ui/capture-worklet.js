// The recorder's AudioWorklet: posts each 128-sample block of the (mono-mixed) microphone input
// to the page, which keeps them and encodes a WAV when recording stops.
class WhisperdCapture extends AudioWorkletProcessor {
  process(inputs) {
    const c = inputs[0] && inputs[0][0];
    if (c) this.port.postMessage(c.slice(0));
    return true;
  }
}
registerProcessor('whisperd-capture', WhisperdCapture);
