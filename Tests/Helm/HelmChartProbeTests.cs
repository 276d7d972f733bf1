using System.Text.RegularExpressions;
using Rbs.Orchestrator.Hosting;
using Rbs.Shared.Telemetry;

namespace Rbs.Tests.Helm;

/// <summary>
/// The chart's probes use the endpoints the servers serve (docs/operations.md): the gateway's readiness is /readyz and
/// its liveness /healthz on the agent port; the orchestrator's readiness is grpc.health service "" (every check, the
/// state store included) and its liveness the cheap service "liveness". A probe left on the old always-ok path would
/// keep a pod whose dependency is down in its Service.
/// </summary>
public sealed partial class HelmChartProbeTests
{
    [Fact]
    public void TheGatewayProbesAreReadyzAndHealthzOnTheAgentPort()
    {
        var template = Template("gateway-deployment.yaml");
        var readiness = Probe(template, "readinessProbe");
        var liveness = Probe(template, "livenessProbe");
        Assert.Contains($"path: {RbsTelemetry.ReadinessPath}\n", readiness, StringComparison.Ordinal);
        Assert.Contains($"path: {RbsTelemetry.LivenessPath}\n", liveness, StringComparison.Ordinal);
        Assert.Contains("port: {{ .Values.gateway.ports.tunnel }}", readiness, StringComparison.Ordinal);
        Assert.Contains("port: {{ .Values.gateway.ports.tunnel }}", liveness, StringComparison.Ordinal);
        // The readiness check asks the orchestrator with a 2 s deadline: the probe must wait longer than that.
        Assert.Matches(@"timeoutSeconds: [3-9]\b", readiness);
        Assert.Contains("prometheus.io/path: /metrics", template, StringComparison.Ordinal);
    }

    [Fact]
    public void TheOrchestratorProbesAreGrpcHealthReadinessAndLivenessServices()
    {
        var template = Template("orchestrator-deployment.yaml");
        var readiness = Probe(template, "readinessProbe");
        var liveness = Probe(template, "livenessProbe");
        Assert.Contains("grpc:", readiness, StringComparison.Ordinal);
        Assert.DoesNotContain("service:", readiness, StringComparison.Ordinal);
        Assert.Contains($"service: {OrchestratorServiceCollectionExtensions.LivenessService}\n", liveness, StringComparison.Ordinal);
        Assert.Matches(@"timeoutSeconds: [3-9]\b", readiness);
    }

    /// <summary>The probe's block: its line and the lines indented deeper than it.</summary>
    private static string Probe(string template, string name)
    {
        var match = Regex.Match(template, $@"^(?<indent> +){name}:\n(?<body>(?:\k<indent> +.*\n)+)", RegexOptions.Multiline);
        Assert.True(match.Success, $"no {name} in the template");
        return match.Groups["body"].Value;
    }

    private static string Template(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var path = Path.Combine(dir.FullName, "helm", "rbs", "templates", name);
            if (File.Exists(path))
            {
                return File.ReadAllText(path).ReplaceLineEndings("\n");
            }
        }

        throw new FileNotFoundException($"helm/rbs/templates/{name} not found above {AppContext.BaseDirectory}");
    }
}
