using System.Diagnostics;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;
using Rbs.Shared.Text;

namespace Rbs.Agent.Execution;

/// <summary>
/// The audit record of each command (docs/operations.md): one structured log line when it ends, with user, agent,
/// invocation, arguments (secret values redacted), exit code, duration and the client's trace id, in its own category
/// (<see cref="Category"/>) so it can be routed and kept apart from the diagnostic log.
/// </summary>
internal sealed partial class CommandAudit(IOptions<AgentOptions> options, ILoggerFactory loggerFactory)
{
    public const string Category = "Rbs.Agent.Audit";

    public const string Redacted = "<redacted>";

    private readonly ILogger _logger = loggerFactory.CreateLogger(Category);

    public void CommandEnded(string invocationId, IReadOnlyList<string> args, int exitCode, int signal, TimeSpan elapsed, bool interrupted) =>
        Log.CommandAudited(
            _logger,
            string.IsNullOrWhiteSpace(options.Value.UserId) ? "(unknown)" : options.Value.UserId,
            options.Value.AgentId,
            invocationId,
            string.Join(' ', RedactArguments(args).Select(Quote)),
            exitCode,
            signal,
            elapsed.TotalMilliseconds,
            interrupted,
            // The client's trace (jbazel's traceparent, continued by ASP.NET Core): the audit line leads to the trace.
            Activity.Current?.TraceId.ToHexString() ?? "none");

    /// <summary>
    /// The arguments with the value of every one that may carry a secret replaced by <see cref="Redacted"/>: flags whose
    /// name says so (token, password, secret, key, credential, auth, header: <c>--remote_header=Authorization=…</c>,
    /// <c>--bes_header</c>, <c>--google_credentials</c>), in <c>--flag=value</c> and <c>--flag value</c> form, and
    /// <c>NAME=value</c> assignments of such names (<c>--action_env=API_TOKEN=…</c>, <c>--client_env</c>).
    /// </summary>
    public static IReadOnlyList<string> RedactArguments(IReadOnlyList<string> args)
    {
        var result = new string[args.Count];
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal))
            {
                result[i] = arg;
                continue;
            }

            var equals = arg.IndexOf('=', StringComparison.Ordinal);
            var name = equals < 0 ? arg : arg[..equals];
            if (!IsSecretName(name))
            {
                // --action_env=GITHUB_TOKEN=abc: the flag is harmless, the assignment is not.
                result[i] = equals >= 0 && Assignment().Match(arg, equals + 1) is { Success: true } assignment && IsSecretName(assignment.Groups["name"].Value)
                    ? arg[..(equals + 1)] + assignment.Groups["name"].Value + "=" + Redacted
                    : arg;
                continue;
            }

            if (equals >= 0)
            {
                result[i] = name + "=" + Redacted;
            }
            else
            {
                result[i] = arg;
                // --remote_header value: the next argument is the value (unless it is another flag or a boolean form).
                if (i + 1 < args.Count && !args[i + 1].StartsWith("--", StringComparison.Ordinal) && !name.StartsWith("--no", StringComparison.Ordinal))
                {
                    result[++i] = Redacted;
                }
            }
        }

        return result;
    }

    private static bool IsSecretName(string name) => SecretName().IsMatch(name);

    private static string Quote(string arg) => UntrustedText.Echo(arg);

    [GeneratedRegex("(token|password|passwd|secret|key|credential|auth|header|cookie)", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex SecretName();

    [GeneratedRegex(@"\G(?<name>[A-Za-z_][A-Za-z0-9_.\-]*)=", RegexOptions.CultureInvariant)]
    private static partial Regex Assignment();

    private static partial class Log
    {
        [LoggerMessage(EventId = 190, Level = LogLevel.Information, Message = "Audit: user {User} agent {AgentId} invocation {InvocationId} ran [{Args}] exit code {ExitCode} signal {Signal} in {DurationMs:0} ms; interrupted: {Interrupted}; trace {TraceId}")]
        public static partial void CommandAudited(ILogger logger, string user, string agentId, string invocationId, string args, int exitCode, int signal, double durationMs, bool interrupted, string traceId);
    }
}
