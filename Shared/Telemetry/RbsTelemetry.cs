using System.Diagnostics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;
using Rbs.Shared.Hosting;

namespace Rbs.Shared.Telemetry;

/// <summary>
/// A server's telemetry settings (section <c>&lt;Server&gt;:Telemetry</c>, e.g. <c>Gateway:Telemetry:OtlpEndpoint</c>,
/// env <c>Gateway__Telemetry__OtlpEndpoint</c>). docs/operations.md lists the metrics, the health endpoints and the traces.
/// </summary>
internal sealed class RbsTelemetryOptions
{
    public const string SubsectionName = "Telemetry";

    /// <summary>
    /// Path of the Prometheus scrape endpoint; <c>off</c> (or empty) serves none. Default <c>/metrics</c>. The gateway
    /// serves it on its agent (cluster-internal) endpoint only.
    /// </summary>
    public string MetricsPath { get; set; } = "/metrics";

    /// <summary>
    /// An OTLP collector (e.g. <c>http://otel-collector:4317</c>, gRPC) that receives metrics and traces; none by default
    /// (nothing is sent and nothing breaks without one). The standard <c>OTEL_EXPORTER_OTLP_*</c> variables refine it.
    /// </summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary>Whether <see cref="MetricsPath"/> names an endpoint.</summary>
    public bool MetricsEnabled => !string.IsNullOrWhiteSpace(MetricsPath) && !string.Equals(MetricsPath.Trim(), "off", StringComparison.OrdinalIgnoreCase);

    /// <summary>The keys and defaults for a server's <c>--help</c> (the flags are <see cref="Flags"/>).</summary>
    public static IEnumerable<ServerFlag> Flags(string serverSection)
    {
        var prefix = $"{serverSection}:{SubsectionName}:";
        yield return new("--metrics-path", prefix + nameof(MetricsPath), "PATH|off", "/metrics", "Prometheus scrape endpoint (off: none); the gateway serves it on its agent endpoint only.");
        yield return new("--otlp-endpoint", prefix + nameof(OtlpEndpoint), "URL", "none", "OTLP collector for metrics and traces (gRPC, e.g. http://otel-collector:4317); optional.");
    }
}

/// <summary>Start-up checks of <see cref="RbsTelemetryOptions"/>, naming the key to fix.</summary>
internal sealed class RbsTelemetryOptionsValidator(string section) : IValidateOptions<RbsTelemetryOptions>
{
    public ValidateOptionsResult Validate(string? name, RbsTelemetryOptions options)
    {
        var prefix = $"{section}:{RbsTelemetryOptions.SubsectionName}:";
        if (options.MetricsEnabled && !options.MetricsPath.StartsWith('/'))
        {
            return ValidateOptionsResult.Fail($"{prefix}{nameof(options.MetricsPath)} (--metrics-path) must start with '/' (e.g. /metrics) or be 'off', not '{options.MetricsPath}'.");
        }

        if (!string.IsNullOrWhiteSpace(options.OtlpEndpoint)
            && !(Uri.TryCreate(options.OtlpEndpoint, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https"))
        {
            return ValidateOptionsResult.Fail($"{prefix}{nameof(options.OtlpEndpoint)} (--otlp-endpoint) must be an absolute http:// or https:// address, e.g. http://otel-collector:4317.");
        }

        return ValidateOptionsResult.Success;
    }
}

/// <summary>
/// One call per host (Aspire's service defaults): OpenTelemetry metrics (ASP.NET Core, HttpClient, runtime and the
/// server's own meter) with a Prometheus scrape endpoint and/or OTLP, traces (ASP.NET Core and HttpClient continue the
/// caller's W3C <c>traceparent</c>), and health checks: <c>/healthz</c> (liveness: the process answers; checks tagged
/// <see cref="LiveTag"/> only) and <c>/readyz</c> (readiness: every check, i.e. what the server needs to serve).
/// </summary>
internal static class RbsTelemetry
{
    /// <summary>Health checks with this tag run for liveness too; every check runs for readiness.</summary>
    public const string LiveTag = "live";

    public const string LivenessPath = "/healthz";

    public const string ReadinessPath = "/readyz";

    /// <summary>The source of the servers' own spans (e.g. a command on the agent), beside ASP.NET Core's.</summary>
    public static readonly ActivitySource Source = new("Rbs");

    /// <param name="services">The host's services.</param>
    /// <param name="configuration">The host's configuration (read once, for the exporters).</param>
    /// <param name="serverSection">The server's section (<c>Gateway</c>, <c>Orchestrator</c>, <c>Agent</c>).</param>
    /// <param name="serviceName">service.name (<c>rbs-gateway</c>, ...).</param>
    /// <param name="meterName">The server's meter (<c>Rbs.Gateway</c>, ...), created in the feature folders through IMeterFactory.</param>
    public static IHealthChecksBuilder AddRbsTelemetry(this IServiceCollection services, IConfiguration configuration, string serverSection, string serviceName, string meterName)
    {
        var section = $"{serverSection}:{RbsTelemetryOptions.SubsectionName}";
        services.AddOptions<RbsTelemetryOptions>().BindConfiguration(section).ValidateOnStart();
        services.AddSingleton<IValidateOptions<RbsTelemetryOptions>>(new RbsTelemetryOptionsValidator(serverSection));

        // Read here as well: the exporters are chosen while the services are registered. An invalid value is reported
        // by the validator at start; until then it counts as "none".
        var options = new RbsTelemetryOptions();
        configuration.GetSection(section).Bind(options);
        var otlp = Uri.TryCreate(options.OtlpEndpoint, UriKind.Absolute, out var endpoint) && endpoint.Scheme is "http" or "https" ? endpoint : null;

        var telemetry = services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(serviceName, serviceInstanceId: Environment.MachineName + "/" + Environment.ProcessId))
            .WithMetrics(metrics =>
            {
                metrics.AddMeter(meterName)
                    .AddAspNetCoreInstrumentation()
                    .AddHttpClientInstrumentation()
                    .AddRuntimeInstrumentation();
                if (options.MetricsEnabled)
                {
                    metrics.AddPrometheusExporter();
                }

                if (otlp is not null)
                {
                    metrics.AddOtlpExporter(o => o.Endpoint = otlp);
                }
            })
            .WithTracing(tracing =>
            {
                tracing.AddSource(Source.Name)
                    .AddAspNetCoreInstrumentation(o => o.Filter = context => !IsProbeOrScrape(context.Request.Path, options))
                    .AddHttpClientInstrumentation();
                if (otlp is not null)
                {
                    tracing.AddOtlpExporter(o => o.Endpoint = otlp);
                }
            });
        _ = telemetry;

        return services.AddHealthChecks().AddCheck("process", () => HealthCheckResult.Healthy(), [LiveTag]);
    }

    /// <summary>
    /// <c>/healthz</c>, <c>/readyz</c> and the scrape endpoint, anonymous (probes carry no token). Returns the scrape
    /// endpoint's builder (null when it is off), so a host can restrict it to an internal listener.
    /// </summary>
    public static IEndpointConventionBuilder? MapRbsTelemetry(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapHealthChecks(LivenessPath, new HealthCheckOptions { Predicate = check => check.Tags.Contains(LiveTag), ResponseWriter = WriteAsync })
            .AllowAnonymous();
        endpoints.MapHealthChecks(ReadinessPath, new HealthCheckOptions { ResponseWriter = WriteAsync }).AllowAnonymous();
        var options = endpoints.ServiceProvider.GetRequiredService<IOptions<RbsTelemetryOptions>>().Value;
        return options.MetricsEnabled ? endpoints.MapPrometheusScrapingEndpoint(options.MetricsPath.Trim()).AllowAnonymous() : null;
    }

    /// <summary>The probe and scrape paths, which make no spans (they would drown the traces that matter).</summary>
    public static bool IsProbeOrScrape(PathString path, RbsTelemetryOptions options) =>
        path.StartsWithSegments(LivenessPath) || path.StartsWithSegments(ReadinessPath)
        || (options.MetricsEnabled && path.StartsWithSegments(options.MetricsPath.Trim()));

    /// <summary>One line per check (<c>name: Healthy</c> or <c>name: Unhealthy (why)</c>) after the overall status, for people and probes alike.</summary>
    private static Task WriteAsync(HttpContext context, HealthReport report)
    {
        context.Response.ContentType = "text/plain; charset=utf-8";
        var text = new System.Text.StringBuilder();
        text.Append(report.Status).Append('\n');
        foreach (var (name, entry) in report.Entries.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            text.Append(name).Append(": ").Append(entry.Status);
            if (!string.IsNullOrEmpty(entry.Description))
            {
                text.Append(" (").Append(entry.Description.ReplaceLineEndings(" ")).Append(')');
            }

            text.Append('\n');
        }

        return context.Response.WriteAsync(text.ToString(), context.RequestAborted);
    }
}
