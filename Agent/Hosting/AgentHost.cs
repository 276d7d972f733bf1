using Rbs.Agent.Sync;
using Rbs.Agent.Tunnel;

namespace Rbs.Agent.Hosting;

/// <summary>Builds the agent's WebApplication from command-line arguments (Program.cs and in-process tests).</summary>
internal static class AgentHost
{
    /// <summary>
    /// The friendly flags of the cross-component contract, mapped onto the <c>Agent</c> section, plus tunnel mode's
    /// (<c>--gateway</c>, <c>--join-token</c>, <c>--join-token-file</c>; <see cref="AgentTunnelOptions.SwitchMappings"/>) and
    /// workspace sync's (<c>--sync-*</c>; <see cref="WorkspaceSyncOptions.SwitchMappings"/>).
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>(AgentTunnelOptions.SwitchMappings, StringComparer.Ordinal)
    {
        ["--agent-id"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.AgentId)}",
        ["--workspace"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.Workspace)}",
        ["--build-tool"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.BuildTool)}",
        ["--listen"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.Listen)}",
        ["--ready-file"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.ReadyFile)}",
        ["--idle-exit-after"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.IdleExitAfter)}",
        ["--interrupt-grace-period"] = $"{AgentOptions.SectionName}:{nameof(AgentOptions.InterruptGracePeriod)}",
    }.Concat(WorkspaceSyncOptions.SwitchMappings).ToDictionary(StringComparer.Ordinal);

    /// <summary>A builder with the agent's configuration sources: appsettings, <c>Agent__*</c> env vars, then flags.</summary>
    public static WebApplicationBuilder CreateBuilder(string[] args)
    {
        // Args are not handed to CreateBuilder: its own command-line source would also see the friendly flags
        // (as keys like "agent-id") and reject none of them, hiding typos; ours maps them and runs last.
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Configuration.AddCommandLine(args, SwitchMappings.ToDictionary(StringComparer.Ordinal));
        return builder;
    }

    /// <summary>
    /// The whole agent; Program.cs runs exactly this. <paramref name="configure"/> runs before AddAgent, so tests can
    /// add logging or replace services such as TimeProvider. With <c>--gateway</c> the agent dials out to the gateway
    /// and listens on a socket only when <c>--listen</c> was given explicitly.
    /// </summary>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = CreateBuilder(args);
        configure?.Invoke(builder);
        builder.Services.AddAgent(builder.Configuration);
        if (builder.Configuration.IsAgentTunnelEnabled())
        {
            builder.WebHost.UseAgentTunnel();
        }

        var app = builder.Build();
        app.MapAgent();
        return app;
    }
}
