using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.State.Postgres;

namespace Rbs.Orchestrator.Hosting;

/// <summary>Builds and runs the orchestrator's WebApplication; tests host it in-process through here.</summary>
internal static class OrchestratorHost
{
    /// <summary>Friendly flags → configuration keys (<c>--port 0</c> or <c>--port=0</c>).</summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["--local-mode"] = "Orchestrator:LocalMode",
        ["--backend"] = "Orchestrator:Backend",
        ["--port"] = "Orchestrator:Port",
        ["--listen-address"] = "Orchestrator:ListenAddress",
        ["--state-path"] = "Orchestrator:StatePath",
        ["--ready-file"] = "Orchestrator:ReadyFile",
        ["--workspaces-path"] = "Orchestrator:WorkspacesPath",
        ["--idle-ttl"] = "Orchestrator:IdleTtl",
        ["--reap-interval"] = "Orchestrator:ReapInterval",
        ["--agent-start-timeout"] = "Orchestrator:AgentStartTimeout",
        ["--agent-path"] = "Orchestrator:Process:AgentPath",
        ["--build-tool"] = "Orchestrator:Process:BuildTool",
        ["--postgres"] = "Orchestrator:Postgres:ConnectionString",
        ["--default-connect-mode"] = "Orchestrator:DefaultConnectMode",
        ["--api-keys-file"] = "Orchestrator:ApiKeysFile",
        ["--gateway-public-address"] = "Orchestrator:Gateway:PublicAddress",
        ["--gateway-agent-address"] = "Orchestrator:Gateway:AgentAddress",
        ["--token-key-file"] = "Orchestrator:Gateway:TokenKeyFile",
    };

    // Flags that may appear bare (no value); the command-line provider needs "=true" for those.
    private static readonly HashSet<string> s_booleanFlags = ["--local-mode"];

    /// <summary>
    /// The builder with configuration (appsettings, env, flags), logging (to stderr: stdout carries only the
    /// "listening" line) and Kestrel (h2c on the configured address and port).
    /// </summary>
    /// <param name="args">Command-line arguments.</param>
    /// <param name="contentRoot">Where appsettings.json is read from; default: the current directory.</param>
    public static WebApplicationBuilder CreateBuilder(string[] args, string? contentRoot = null)
    {
        var normalized = NormalizeBooleanFlags(args);
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            Args = normalized,
            ContentRootPath = contentRoot,
        });
        builder.Configuration.AddCommandLine(normalized, SwitchMappings.ToDictionary());
        builder.Logging.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace);
        // RunAsync reports start-up failures itself, as one line; the host's own report is a stack trace.
        builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.Critical);

        builder.WebHost.ConfigureKestrel((context, kestrel) =>
        {
            // This runs while the app is being built, before ValidateOnStart; invalid settings are left for
            // that step to report as one clear error instead of an exception from deep inside Build().
            OrchestratorOptions options;
            try
            {
                options = context.Configuration.GetSection(OrchestratorOptions.SectionName).Get<OrchestratorOptions>() ?? new();
            }
            catch (InvalidOperationException)
            {
                return;
            }

            if (new OrchestratorOptionsValidator().Validate(null, options).Failed)
            {
                return;
            }

            // gRPC only, cleartext: HTTP/2 with prior knowledge (h2c); HTTP/1 is never negotiated.
            kestrel.Listen(options.GetListenAddress(), options.Port, listen => listen.Protocols = HttpProtocols.Http2);
        });
        return builder;
    }

    /// <summary>The complete application: <see cref="CreateBuilder"/>, services, optional test overrides, endpoints.</summary>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null, string? contentRoot = null)
    {
        var builder = CreateBuilder(args, contentRoot);
        builder.Services.AddOrchestrator(builder.Configuration);
        configure?.Invoke(builder);
        var app = builder.Build();
        app.MapOrchestrator();
        return app;
    }

    /// <summary>Runs until shutdown; a startup failure prints one clear line on stderr and returns 1 (2 for bad configuration).</summary>
    public static async Task<int> RunAsync(WebApplication app)
    {
        try
        {
            await app.StartAsync();
        }
        catch (OptionsValidationException e)
        {
            await Console.Error.WriteLineAsync($"rbs-orchestrator: {string.Join("; ", e.Failures)}");
            return 2;
        }
        catch (InvalidOperationException e) when (e.Message.StartsWith("Failed to convert configuration value", StringComparison.Ordinal))
        {
            await Console.Error.WriteLineAsync($"rbs-orchestrator: {e.Message}");
            return 2;
        }
        catch (StateStoreUnavailableException e)
        {
            // The message says which database and what to check; a stack trace would only bury it.
            await Console.Error.WriteLineAsync($"rbs-orchestrator: cannot start: {e.Message}");
            return 1;
        }
        catch (Exception e)
        {
            await Console.Error.WriteLineAsync($"rbs-orchestrator: cannot start: {e.Message}{Environment.NewLine}{e}");
            return 1;
        }

        await app.WaitForShutdownAsync();
        return 0;
    }

    internal static string[] NormalizeBooleanFlags(string[] args)
    {
        var result = new List<string>(args.Length);
        for (var i = 0; i < args.Length; i++)
        {
            var arg = args[i];
            var next = i + 1 < args.Length ? args[i + 1] : null;
            if (s_booleanFlags.Contains(arg)
                && !(next is not null && (next.Equals("true", StringComparison.OrdinalIgnoreCase) || next.Equals("false", StringComparison.OrdinalIgnoreCase))))
            {
                result.Add(arg + "=true");
            }
            else
            {
                result.Add(arg);
            }
        }

        return [.. result];
    }
}
