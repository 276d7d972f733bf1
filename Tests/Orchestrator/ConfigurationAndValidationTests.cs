using System.Net;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Allocation;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Hosting;
using Rbs.V1;

namespace Rbs.Tests.Orchestrator;

/// <summary>Flags, defaults and request validation, without starting anything.</summary>
public sealed class ConfigurationAndValidationTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("rbs-orch-config-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void DefaultsAreTheDocumentedOnes()
    {
        var options = new OrchestratorOptions();
        var process = new ProcessComputeOptions();

        Assert.Equal(50051, options.Port);
        Assert.Equal(TimeSpan.FromHours(3), options.IdleTtl);
        Assert.Equal(TimeSpan.FromSeconds(30), options.ReapInterval);
        Assert.Equal(TimeSpan.FromSeconds(30), options.AgentStartTimeout);
        Assert.Equal(TimeSpan.FromSeconds(10), options.AllocationLeaseMargin);
        Assert.Equal(IPAddress.Any, options.GetListenAddress());
        Assert.Equal(IPAddress.Loopback, new OrchestratorOptions { LocalMode = true }.GetListenAddress());
        Assert.Equal("process", new OrchestratorOptions { LocalMode = true }.GetBackend());
        Assert.EndsWith(Path.Combine("rbs", "orchestrator.db"), options.GetStatePath(), StringComparison.Ordinal);
        Assert.Null(process.AgentPath);
        Assert.Equal(TimeSpan.FromSeconds(30), process.StopTimeout);
        Assert.Equal("Orchestrator", OrchestratorOptions.SectionName);
        Assert.Equal("Orchestrator:Process", ProcessComputeOptions.SectionName);
    }

    [Fact]
    public async Task FlagsMapToTheirConfigurationKeys()
    {
        string[] args =
        [
            "--local-mode", "--port", "0", "--listen-address", "127.0.0.2", "--state-path", "~/rbs-test/state.db",
            "--idle-ttl", "00:10:00", "--reap-interval=00:00:05", "--agent-start-timeout", "00:00:07",
            "--allocation-lease-margin", "00:00:03",
            "--agent-path", "/opt/rbs/rbs-agent", "--build-tool", "/usr/bin/bazel", "--ready-file", "/tmp/ready.json",
        ];
        await using var app = OrchestratorHost.Build(args, contentRoot: _root);

        var options = app.Services.GetRequiredService<IOptions<OrchestratorOptions>>().Value;
        var process = app.Services.GetRequiredService<IOptions<ProcessComputeOptions>>().Value;

        Assert.True(options.LocalMode);
        Assert.Equal(0, options.Port);
        Assert.Equal(IPAddress.Parse("127.0.0.2"), options.GetListenAddress());
        Assert.Equal(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), "rbs-test", "state.db"), options.GetStatePath());
        Assert.Equal(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), "rbs-test", "agents"), options.GetAgentsDirectory());
        Assert.Equal(TimeSpan.FromMinutes(10), options.IdleTtl);
        Assert.Equal(TimeSpan.FromSeconds(5), options.ReapInterval);
        Assert.Equal(TimeSpan.FromSeconds(7), options.AgentStartTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), options.AllocationLeaseMargin);
        Assert.Equal("/tmp/ready.json", options.ReadyFile);
        Assert.Equal("/opt/rbs/rbs-agent", process.AgentPath);
        Assert.Equal("/usr/bin/bazel", process.BuildTool);
    }

    [Theory]
    [InlineData(new[] { "--local-mode", "--port", "0" }, "true")]
    [InlineData(new[] { "--port", "0", "--local-mode" }, "true")]
    [InlineData(new[] { "--local-mode", "false", "--port", "0" }, "false")]
    [InlineData(new[] { "--local-mode=false" }, "false")]
    public void BareBooleanFlagsGetAValue(string[] args, string expected)
    {
        var settings = OrchestratorHost.CommandLine.Parse(args).Settings;
        Assert.Equal(expected, settings["Orchestrator:LocalMode"]);
    }

    [Theory]
    [InlineData(false, null, 50051, "no compute backend configured: pass --local-mode")]
    [InlineData(true, "kubernetes", 50051, "cannot be combined with Orchestrator:Backend 'kubernetes'")]
    [InlineData(false, "docker", 50051, "Orchestrator:Backend 'docker' is unknown")]
    [InlineData(true, null, 70000, "--port 70000 is out of range")]
    public void InvalidSettingsSayWhatToFix(bool localMode, string? backend, int port, string expected)
    {
        var result = new OrchestratorOptionsValidator().Validate(null, new OrchestratorOptions { LocalMode = localMode, Backend = backend, Port = port });

        Assert.True(result.Failed);
        Assert.Contains(expected, result.FailureMessage, StringComparison.Ordinal);
    }

    [Fact]
    public void LocalModeIsValid() =>
        Assert.True(new OrchestratorOptionsValidator().Validate(null, new OrchestratorOptions { LocalMode = true }).Succeeded);

    [Fact]
    public void SourcePathsAreNormalized()
    {
        var workspace = Directory.CreateDirectory(Path.Combine(_root, "ws")).FullName;

        Assert.Equal(workspace, Validate("repo", workspace + "/"));
        Assert.Equal(workspace, Validate("repo", Path.Combine(_root, "other", "..", "ws")));
    }

    [Fact]
    public void AFileIsNotAWorkspaceAndUnknownConnectModesAreRejected()
    {
        var file = Path.Combine(_root, "file.txt");
        File.WriteAllText(file, "x");

        var notDirectory = Assert.Throws<RpcException>(() => Validate("repo", file));
        var badMode = Assert.Throws<RpcException>(() => GetServerRequestValidator.Validate(
            new GetServerRequest { RepoHash = "repo", SourcePath = _root, ConnectMode = (ConnectMode)7 }, sourceMustExist: true));

        Assert.Equal(StatusCode.InvalidArgument, notDirectory.StatusCode);
        Assert.Contains("is a file", notDirectory.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.InvalidArgument, badMode.StatusCode);
        Assert.Contains("connect_mode 7 is unknown", badMode.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void ANonexistentSourceIsAcceptedWhereTheAgentDoesNotBuildInPlace() =>
        Assert.Equal("/not/on/this/machine", GetServerRequestValidator.Validate(
            new GetServerRequest { RepoHash = "repo", SourcePath = "/not/on/this/machine" }, sourceMustExist: false));

    [Fact]
    public void AgentIdsHaveTheDocumentedShape()
    {
        var ids = Enumerable.Range(0, 100).Select(_ => AgentIds.New()).ToList();

        Assert.All(ids, id => Assert.Matches("^a[0-9a-f]{20}$", id));
        Assert.Equal(ids.Count, ids.Distinct().Count());
    }

    private static string Validate(string repoHash, string sourcePath) =>
        GetServerRequestValidator.Validate(new GetServerRequest { RepoHash = repoHash, SourcePath = sourcePath }, sourceMustExist: true);
}
