//! `whisperd serve`

use std::path::PathBuf;
use std::process::ExitCode;

use whisperd::config::Config;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML; see config/default.toml).
    #[arg(long, env = "WHISPERD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to bind (overrides config and WHISPERD_HOST).
    #[arg(long)]
    host: Option<String>,
    /// Port (0 = any free port).
    #[arg(long)]
    port: Option<u16>,
    /// Model directory.
    #[arg(long)]
    model: Option<String>,
    /// Several model directories, comma-separated (the first is the default; a request's
    /// `model` picks one by its directory name).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Unload a model idle this many seconds (0 = never).
    #[arg(long)]
    model_ttl_s: Option<u64>,
    /// Memory budget for loaded models in MB (0 = none).
    #[arg(long)]
    models_memory_mb: Option<u64>,
    /// Compute threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    device: Option<whisperd::engine::DeviceSpec>,
    /// f32 or q8.
    #[arg(long)]
    precision: Option<whisperd::model::Precision>,
    /// Requests that may wait for inference.
    #[arg(long)]
    queue_size: Option<usize>,
    /// Silero VAD on /transcribe by default: true or false (overrides config and WHISPERD_VAD).
    #[arg(long)]
    vad: Option<bool>,
    /// Silero VAD v6 ONNX file (default: silero-vad/ beside the model directory).
    #[arg(long)]
    vad_model: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(h) = &args.host {
        cfg.host = h.clone();
    }
    if let Some(p) = args.port {
        cfg.port = p;
    }
    if let Some(m) = &args.model {
        cfg.model = m.clone();
    }
    if let Some(m) = &args.models {
        cfg.models = m.clone();
    }
    if let Some(t) = args.model_ttl_s {
        cfg.model_ttl_s = t;
    }
    if let Some(m) = args.models_memory_mb {
        cfg.models_memory_mb = m;
    }
    if let Some(d) = args.device {
        cfg.device = d;
    }
    if let Some(p) = args.precision {
        cfg.precision = p;
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(q) = args.queue_size {
        cfg.queue_size = q;
    }
    if let Some(v) = args.vad {
        cfg.vad = v;
    }
    if let Some(m) = &args.vad_model {
        cfg.vad_model = m.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = effective_config(&args)?;
    if args.print_config {
        print!("{}", cfg.to_commented_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let otlp = (!cfg.otlp_endpoint.is_empty()).then(|| whisperd::telemetry::OtlpSettings {
        endpoint: cfg.otlp_endpoint.clone(),
        sample_ratio: cfg.otlp_sample_ratio,
    });
    let telemetry = whisperd::telemetry::init(&cfg.log_format, &cfg.log_level, otlp.as_ref())?;
    super::set_threads((cfg.threads > 0).then_some(cfg.threads));
    let result = actix_web::rt::System::new().block_on(whisperd::server::run(cfg));
    telemetry.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}
