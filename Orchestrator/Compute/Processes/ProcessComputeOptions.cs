namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>Local subprocess agents (<c>--local-mode</c>): section <c>Orchestrator:Process</c>.</summary>
internal sealed class ProcessComputeOptions
{
    public const string SectionName = "Orchestrator:Process";

    /// <summary>
    /// The agent executable (<c>--agent-path</c>). A path ending in ".dll" runs through the current dotnet
    /// host. Default: empty, meaning <c>rbs-agent</c> next to the orchestrator executable
    /// (AppContext.BaseDirectory), else <c>rbs-agent</c> on PATH.
    /// </summary>
    public string? AgentPath { get; set; }

    /// <summary>
    /// Build tool passed to agents as <c>--build-tool</c>. Default: empty, the agent's own default
    /// (<c>bazel</c> on PATH).
    /// </summary>
    public string? BuildTool { get; set; }

    /// <summary>How long StopAsync waits after SIGTERM before SIGKILL. Default: 00:00:10.</summary>
    public TimeSpan StopTimeout { get; set; } = TimeSpan.FromSeconds(10);
}
