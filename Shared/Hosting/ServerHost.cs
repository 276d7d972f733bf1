using System.Net.Sockets;
using System.Reflection;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Rbs.Shared.Text;

namespace Rbs.Shared.Hosting;

/// <summary>
/// The skeleton the three servers share (rbs-orchestrator, rbs-agent, rbs-gateway): the builder reads
/// appsettings.json, the environment (<c>Section__Key</c>) and then the command line as <see cref="ServerCommandLine"/>
/// parsed it; <see cref="RunAsync"/> answers <c>--help</c> and turns every way a start can fail into one line on
/// stderr and an exit code — never a stack trace.
/// </summary>
internal static partial class ServerHost
{
    /// <summary>A bad command line, value or setting: the line names what to fix.</summary>
    public const int BadSettingsExitCode = 2;

    /// <summary>The settings were fine but the server could not start (address in use, database down, ...).</summary>
    public const int StartFailedExitCode = 1;

    /// <summary>
    /// A builder whose configuration ends with the parsed command line (over appsettings.json and the environment).
    /// The arguments are not handed to WebApplication's own command-line source, which would accept any typo as a key.
    /// appsettings.json is read once, without reload-on-change: no option is reloaded at run time (every one is
    /// <see cref="IOptions{TOptions}"/>), and the reload's file watch covers the content root recursively (one
    /// inotify watch per directory): a gateway started in / spent 34 s walking the file system before it listened,
    /// holding 41,000 watches, and one started in /tmp spent CPU on every file written there.
    /// </summary>
    /// <exception cref="CommandLineException">The arguments are not a valid command line.</exception>
    public static WebApplicationBuilder CreateBuilder(ServerCommandLine commandLine, string[] args, string? contentRoot = null)
    {
        var parsed = commandLine.Parse(args);
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            ContentRootPath = contentRoot,
            // The host's own setting, read before appsettings.json is added (the one way to turn its watch off).
            Args = ["--hostBuilder:reloadConfigOnChange=false"],
        });
        builder.Configuration.AddInMemoryCollection(parsed.Settings);
        // RunAsync reports a failed start as one line; the host's own report of it is a stack trace.
        builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.Critical);
        return builder;
    }

    /// <summary>
    /// The server's whole life, for its Program.cs: <c>--help</c> → usage on stdout, exit 0; otherwise build, start
    /// and run until shutdown. Returns the process exit code (<see cref="Environment.ExitCode"/> after a normal stop).
    /// </summary>
    public static async Task<int> RunAsync(ServerCommandLine commandLine, string[] args, Func<string[], WebApplication> build)
    {
        try
        {
            if (commandLine.Parse(args).Help)
            {
                await Console.Out.WriteAsync(commandLine.Usage());
                return 0;
            }
        }
        catch (CommandLineException e)
        {
            await Console.Error.WriteLineAsync($"{commandLine.Name}: {e.Message} Run '{commandLine.Name} --help' for the options.");
            return BadSettingsExitCode;
        }

        WebApplication app;
        try
        {
            app = build(args);
            await app.StartAsync();
        }
        catch (Exception e)
        {
            var (message, exitCode) = DescribeStartFailure(commandLine, e);
            await Console.Error.WriteLineAsync($"{commandLine.Name}: {message}");
            return exitCode;
        }

        await app.WaitForShutdownAsync();
        await app.DisposeAsync();
        return Environment.ExitCode;
    }

    /// <summary>One line (without the server's name) and the exit code for an exception thrown while building or starting.</summary>
    internal static (string Message, int ExitCode) DescribeStartFailure(ServerCommandLine commandLine, Exception exception)
    {
        var e = Unwrap(exception);
        switch (e)
        {
            case CommandLineException:
                return ($"{e.Message} Run '{commandLine.Name} --help' for the options.", BadSettingsExitCode);
            case OptionsValidationException validation:
                return ($"invalid configuration: {string.Join(" ", validation.Failures.Select(Sentence))}", BadSettingsExitCode);
            case InvalidOperationException when ConversionFailure().Match(e.Message) is { Success: true } match:
                // The binder's wording names the key and a CLR type; say which flag and what it wants.
                return ($"invalid value '{UntrustedText.Echo(match.Groups["value"].Value)}' for {commandLine.Describe(match.Groups["key"].Value)}: " +
                    $"expected {Expected(match.Groups["type"].Value)}.", BadSettingsExitCode);
            case IOException when Find<AddressInUseException>(e) is not null || Find<SocketException>(e) is not null || e.Message.StartsWith("Failed to bind", StringComparison.Ordinal):
                return ($"cannot listen: {OneLine(e, withInner: true)}. Stop what is using that address or choose another one ({commandLine.ListenFlags}).", StartFailedExitCode);
            case FormatException:
                return ($"invalid configuration: {OneLine(e)}", BadSettingsExitCode);
            default:
                return ($"cannot start: {OneLine(e)}", StartFailedExitCode);
        }
    }

    private static Exception Unwrap(Exception e)
    {
        while (true)
        {
            switch (e)
            {
                case AggregateException { InnerExceptions.Count: 1 } aggregate:
                    e = aggregate.InnerExceptions[0];
                    continue;
                case TargetInvocationException { InnerException: { } inner }:
                    e = inner;
                    continue;
                default:
                    return e;
            }
        }
    }

    private static T? Find<T>(Exception e)
        where T : Exception
    {
        for (Exception? inner = e; inner is not null; inner = inner.InnerException)
        {
            if (inner is T found)
            {
                return found;
            }
        }

        return null;
    }

    /// <summary>
    /// The message on one line without a trailing period, plus the innermost exception's message when it adds something
    /// and the outer one points at it (or <paramref name="withInner"/>). Messages of the servers' own exceptions are
    /// written to be shown as they are, and may carry secrets only in inner exceptions (a connection string).
    /// </summary>
    private static string OneLine(Exception e, bool withInner = false)
    {
        var message = e.Message.Trim().TrimEnd('.');
        var inner = e.InnerException?.GetBaseException().Message.Trim().TrimEnd('.');
        withInner |= message.Length == 0 || message.Contains("inner exception", StringComparison.OrdinalIgnoreCase);
        if (withInner && !string.IsNullOrEmpty(inner) && !message.Contains(inner, StringComparison.OrdinalIgnoreCase))
        {
            message += $" ({inner})";
        }

        return message.ReplaceLineEndings(" ");
    }

    private static string Sentence(string failure)
    {
        var text = failure.Trim().ReplaceLineEndings(" ");
        return text.EndsWith('.') ? text : text + ".";
    }

    private static string Expected(string type) => type switch
    {
        "System.Int32" or "System.Int64" or "System.UInt32" or "System.UInt64" or "System.Int16" => "a whole number",
        "System.TimeSpan" => "a duration such as 00:00:30 (hh:mm:ss) or 1.00:00:00 (one day)",
        "System.Boolean" => "true or false",
        "System.Double" or "System.Single" or "System.Decimal" => "a number",
        _ => $"a {type.Split('.')[^1]} value",
    };

    [GeneratedRegex("^Failed to convert configuration value '(?<value>.*)' at '(?<key>[^']*)' to type '(?<type>[^']*)'", RegexOptions.Singleline)]
    private static partial Regex ConversionFailure();
}
