# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_hurricane_global_optspecs
    string join \n w/wsgi= asgi= ws-max-size= ws-ping-interval= ws-ping-timeout= loop= bind= port= workers= preload backlog= probe-port= req-queue-len= graceful-timeout= shutdown-delay= boot-timeout= keep-alive= write-timeout= command= check-migrations check-migrations-apply threads= limit-request-line= limit-request-fields= limit-request-field-size= min-body-rate= max-body-size= forwarded-allow-ips= static static-url= static-root= media media-url= media-root= timeout= heartbeat-timeout= max-requests= max-requests-jitter= max-memory= autoreload reload-dir= reload-include= reload-exclude= webhook-url= access-log python= chdir= pythonpath= startup-probe= readiness-probe= liveness-probe= metrics= no-metrics no-probe check-interval= debug log-format= log-file= log-probes log-level= debugger debugger-port= debugger-wait pycharm-host= pycharm-port= h/help V/version
end

function __fish_hurricane_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_hurricane_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_hurricane_using_subcommand
    set -l cmd (__fish_hurricane_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c hurricane -n "__fish_hurricane_needs_command" -s w -l wsgi -d 'The WSGI app to serve: a module, optionally with the callable\'s name (default `application`)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l asgi -d 'The ASGI 3 app to serve instead of a WSGI one: a module, optionally with the app\'s name (default `application`, as in Django\'s and Channels\' `mysite.asgi`); needs `pip install \'hurricane[asgi]\'` (websockets, uvloop) in the workers\' Python' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l ws-max-size -d 'With --asgi: the largest WebSocket message, in bytes; a bigger one closes the socket with 1009' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l ws-ping-interval -d 'With --asgi: ping a WebSocket that has been idle this many seconds (0: never)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l ws-ping-timeout -d 'With --asgi: close a WebSocket (1011) whose ping is unanswered this many seconds' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l loop -d 'With --asgi: the event loop: uvloop, asyncio, or auto (uvloop when it imports)' -r -f -a "auto\t''
asyncio\t''
uvloop\t''"
complete -c hurricane -n "__fish_hurricane_needs_command" -l bind -d 'Address to listen on' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l port -d 'Port to listen on (0 picks a free one and logs it)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l workers -d 'Number of worker processes [default: the CPUs this process may use, cgroup quota included]' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l backlog -d 'Listen backlog: connections the kernel queues while every worker is busy' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l probe-port -d 'Port of the probe server [default: --port + 1]' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l req-queue-len -d '/ready answers 503 while the kernel\'s accept queue holds this many connections or more' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l graceful-timeout -d 'Seconds a stopping worker gets to finish its requests before it is killed' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l shutdown-delay -d 'Seconds to keep serving after SIGTERM (with /ready failing) before workers drain' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l boot-timeout -d 'Seconds a worker may take to import the app and report ready' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l keep-alive -d 'Seconds an idle keep-alive connection stays open' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l write-timeout -d 'Seconds a client may take without reading any of a response before its connection is cut (a response the socket cannot take waits on its connection, holding no worker; 0: never)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l command -d 'Run this Django management command before the workers start, e.g. "migrate --noinput" (repeatable, in order; in the environment, \';\'-separated). A failure stops startup' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l threads -d 'Threads per worker running the app: auto starts a pool when the app is seen waiting on I/O (a database, an API), N always runs N threads, 1 runs the app on the event loop' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l limit-request-line -d 'Longest request line, in bytes; longer is answered 414' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l limit-request-fields -d 'Most header fields in a request; more is answered 431' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l limit-request-field-size -d 'Longest header field line, in bytes; longer is answered 431' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l min-body-rate -d 'A request body still arriving after 5 s at less than this many bytes a second on average is answered 408 (0: no minimum)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l max-body-size -d 'Largest request body, in bytes; larger is answered 413' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l forwarded-allow-ips -d 'Peers trusted to set X-Forwarded-For/-Proto (comma-separated addresses or CIDRs, or *)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l static-url -d 'URL prefix of static files [default: /static/, or Django\'s STATIC_URL]' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l static-root -d 'Directory of static files (implies --static) [default: Django\'s STATIC_ROOT]' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l media-url -d 'URL prefix of media files [default: /media/, or Django\'s MEDIA_URL]' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l media-root -d 'Directory of media files (implies --media) [default: Django\'s MEDIA_ROOT]' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l timeout -d 'Seconds a request may run before its worker is killed and replaced (0: no limit)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l heartbeat-timeout -d 'Seconds a worker may go without a heartbeat (a frozen process) before it is killed (0: no limit)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l max-requests -d 'Replace a worker after this many requests, its successor ready first (0: never)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l max-requests-jitter -d 'Add a random 0..=J to each worker\'s --max-requests, so workers do not recycle together' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l max-memory -d 'Replace a worker whose resident memory exceeds this many MiB, its successor ready first (0: never)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l reload-dir -d 'With --autoreload, also watch this directory, recursively (repeatable)' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l reload-include -d 'With --autoreload, file names that count as changes (repeatable) [default: *.py]' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l reload-exclude -d 'With --autoreload, file names that never count (repeatable; __pycache__, *.pyc, .git and editor temp files never count anyway)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l webhook-url -d 'POST a JSON event here on startup, readiness/liveness changes, reloads, shutdown and worker restarts (repeatable; in the environment, \',\'-separated)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l python -d 'Python interpreter of the workers [default: $VIRTUAL_ENV/bin/python, else python3 on PATH; celery: the interpreter the command names, or its script\'s #! line]' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l chdir -d 'Change to this directory before loading the app (the handler, the command)' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l pythonpath -d 'Directory to put first on the workers\' sys.path (repeatable; in the environment, \':\'-separated)' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l startup-probe -d 'Path of the startup probe' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l readiness-probe -d 'Path of the readiness probe' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l liveness-probe -d 'Path of the liveness probe (`--probe` is the same option)' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l metrics -d 'Path of the Prometheus metrics on the probe port' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l check-interval -d 'Seconds a Django check result answers probes before the next probe asks for a fresh one' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l log-format -d 'Log format of hurricane\'s lines (master and workers): text (key=value) or json (one object per line)' -r -f -a "text\t''
json\t''"
complete -c hurricane -n "__fish_hurricane_needs_command" -l log-file -d 'Write hurricane\'s log lines (master and workers) to this file (SIGUSR1 reopens it)' -r -F
complete -c hurricane -n "__fish_hurricane_needs_command" -l log-level -d 'Log level: error, warn, info, debug or trace' -r -f -a "error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c hurricane -n "__fish_hurricane_needs_command" -l debugger-port -d 'Port debugpy listens on' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l pycharm-host -d 'Connect the worker to PyCharm\'s debug server on HOST (pydevd_pycharm.settrace, not suspended); the same one-worker rules as --debugger. Needs pydevd-pycharm in the workers\' Python' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l pycharm-port -d 'Port of PyCharm\'s debug server' -r
complete -c hurricane -n "__fish_hurricane_needs_command" -l preload -d 'Import the app once in a zygote process and fork the workers from it: they share its memory and start in milliseconds; HUP and --autoreload start a new zygote, so new code still loads. The app must not start threads at import (refused, exit 2)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l check-migrations -d 'Before the workers start, wait (polling) until the database answers and no migration is pending'
complete -c hurricane -n "__fish_hurricane_needs_command" -l check-migrations-apply -d 'Before the workers start, apply pending migrations (migrate --noinput) instead of waiting'
complete -c hurricane -n "__fish_hurricane_needs_command" -l static -d 'Serve static files at --static-url from --static-root (or Django\'s STATIC_URL/STATIC_ROOT)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l media -d 'Serve uploaded media at --media-url from --media-root (or Django\'s MEDIA_URL/MEDIA_ROOT)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l autoreload -d 'Reload when a source file of the app changes (development)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l access-log -d 'Log one line per request (remote, method, path, status, size, duration, worker)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l no-metrics -d 'Do not serve metrics'
complete -c hurricane -n "__fish_hurricane_needs_command" -l no-probe -d 'Do not run the probe server'
complete -c hurricane -n "__fish_hurricane_needs_command" -l debug -d 'Show failing checks\' messages in probe answers (they may name hosts or settings)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l log-probes -d 'Log probe requests too (they are not logged otherwise)'
complete -c hurricane -n "__fish_hurricane_needs_command" -l debugger -d 'Start debugpy in the worker, listening on --debugger-port (at --bind\'s address) for VS Code or any Debug Adapter Protocol client to attach. Development only: it runs one worker with no --timeout, no frozen-worker kill and no --preload, and whoever reaches the port can run code in the worker. Needs debugpy in the workers\' Python'
complete -c hurricane -n "__fish_hurricane_needs_command" -l debugger-wait -d 'With --debugger: the worker waits for the debugger to attach before it loads the app and reports ready (so breakpoints at import hit; --boot-timeout does not apply)'
complete -c hurricane -n "__fish_hurricane_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hurricane -n "__fish_hurricane_needs_command" -s V -l version -d 'Print version'
complete -c hurricane -n "__fish_hurricane_needs_command" -f -a "serve" -d 'Serve a WSGI app on N prefork workers (the default command)'
complete -c hurricane -n "__fish_hurricane_needs_command" -f -a "consume" -d 'Consume an AMQP queue with N handler workers running a TopicHandler class'
complete -c hurricane -n "__fish_hurricane_needs_command" -f -a "celery" -d 'Run a Celery worker or beat (`-- celery -A proj worker`) with probes, metrics and PID 1 duties'
complete -c hurricane -n "__fish_hurricane_needs_command" -f -a "generate-docs" -d 'Write the man pages and shell completions into DIR (for packagers; scripts/gen-docs)'
complete -c hurricane -n "__fish_hurricane_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -s w -l wsgi -d 'The WSGI app to serve: a module, optionally with the callable\'s name (default `application`)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l asgi -d 'The ASGI 3 app to serve instead of a WSGI one: a module, optionally with the app\'s name (default `application`, as in Django\'s and Channels\' `mysite.asgi`); needs `pip install \'hurricane[asgi]\'` (websockets, uvloop) in the workers\' Python' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l ws-max-size -d 'With --asgi: the largest WebSocket message, in bytes; a bigger one closes the socket with 1009' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l ws-ping-interval -d 'With --asgi: ping a WebSocket that has been idle this many seconds (0: never)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l ws-ping-timeout -d 'With --asgi: close a WebSocket (1011) whose ping is unanswered this many seconds' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l loop -d 'With --asgi: the event loop: uvloop, asyncio, or auto (uvloop when it imports)' -r -f -a "auto\t''
asyncio\t''
uvloop\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l bind -d 'Address to listen on' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l port -d 'Port to listen on (0 picks a free one and logs it)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l workers -d 'Number of worker processes [default: the CPUs this process may use, cgroup quota included]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l backlog -d 'Listen backlog: connections the kernel queues while every worker is busy' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l probe-port -d 'Port of the probe server [default: --port + 1]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l req-queue-len -d '/ready answers 503 while the kernel\'s accept queue holds this many connections or more' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l graceful-timeout -d 'Seconds a stopping worker gets to finish its requests before it is killed' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l shutdown-delay -d 'Seconds to keep serving after SIGTERM (with /ready failing) before workers drain' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l boot-timeout -d 'Seconds a worker may take to import the app and report ready' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l keep-alive -d 'Seconds an idle keep-alive connection stays open' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l write-timeout -d 'Seconds a client may take without reading any of a response before its connection is cut (a response the socket cannot take waits on its connection, holding no worker; 0: never)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l command -d 'Run this Django management command before the workers start, e.g. "migrate --noinput" (repeatable, in order; in the environment, \';\'-separated). A failure stops startup' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l threads -d 'Threads per worker running the app: auto starts a pool when the app is seen waiting on I/O (a database, an API), N always runs N threads, 1 runs the app on the event loop' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l limit-request-line -d 'Longest request line, in bytes; longer is answered 414' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l limit-request-fields -d 'Most header fields in a request; more is answered 431' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l limit-request-field-size -d 'Longest header field line, in bytes; longer is answered 431' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l min-body-rate -d 'A request body still arriving after 5 s at less than this many bytes a second on average is answered 408 (0: no minimum)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l max-body-size -d 'Largest request body, in bytes; larger is answered 413' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l forwarded-allow-ips -d 'Peers trusted to set X-Forwarded-For/-Proto (comma-separated addresses or CIDRs, or *)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l static-url -d 'URL prefix of static files [default: /static/, or Django\'s STATIC_URL]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l static-root -d 'Directory of static files (implies --static) [default: Django\'s STATIC_ROOT]' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l media-url -d 'URL prefix of media files [default: /media/, or Django\'s MEDIA_URL]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l media-root -d 'Directory of media files (implies --media) [default: Django\'s MEDIA_ROOT]' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l timeout -d 'Seconds a request may run before its worker is killed and replaced (0: no limit)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l heartbeat-timeout -d 'Seconds a worker may go without a heartbeat (a frozen process) before it is killed (0: no limit)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l max-requests -d 'Replace a worker after this many requests, its successor ready first (0: never)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l max-requests-jitter -d 'Add a random 0..=J to each worker\'s --max-requests, so workers do not recycle together' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l max-memory -d 'Replace a worker whose resident memory exceeds this many MiB, its successor ready first (0: never)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l reload-dir -d 'With --autoreload, also watch this directory, recursively (repeatable)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l reload-include -d 'With --autoreload, file names that count as changes (repeatable) [default: *.py]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l reload-exclude -d 'With --autoreload, file names that never count (repeatable; __pycache__, *.pyc, .git and editor temp files never count anyway)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l webhook-url -d 'POST a JSON event here on startup, readiness/liveness changes, reloads, shutdown and worker restarts (repeatable; in the environment, \',\'-separated)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l python -d 'Python interpreter of the workers [default: $VIRTUAL_ENV/bin/python, else python3 on PATH; celery: the interpreter the command names, or its script\'s #! line]' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l chdir -d 'Change to this directory before loading the app (the handler, the command)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l pythonpath -d 'Directory to put first on the workers\' sys.path (repeatable; in the environment, \':\'-separated)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l startup-probe -d 'Path of the startup probe' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l readiness-probe -d 'Path of the readiness probe' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l liveness-probe -d 'Path of the liveness probe (`--probe` is the same option)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l metrics -d 'Path of the Prometheus metrics on the probe port' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l check-interval -d 'Seconds a Django check result answers probes before the next probe asks for a fresh one' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l log-format -d 'Log format of hurricane\'s lines (master and workers): text (key=value) or json (one object per line)' -r -f -a "text\t''
json\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l log-file -d 'Write hurricane\'s log lines (master and workers) to this file (SIGUSR1 reopens it)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l log-level -d 'Log level: error, warn, info, debug or trace' -r -f -a "error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l debugger-port -d 'Port debugpy listens on' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l pycharm-host -d 'Connect the worker to PyCharm\'s debug server on HOST (pydevd_pycharm.settrace, not suspended); the same one-worker rules as --debugger. Needs pydevd-pycharm in the workers\' Python' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l pycharm-port -d 'Port of PyCharm\'s debug server' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l preload -d 'Import the app once in a zygote process and fork the workers from it: they share its memory and start in milliseconds; HUP and --autoreload start a new zygote, so new code still loads. The app must not start threads at import (refused, exit 2)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l check-migrations -d 'Before the workers start, wait (polling) until the database answers and no migration is pending'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l check-migrations-apply -d 'Before the workers start, apply pending migrations (migrate --noinput) instead of waiting'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l static -d 'Serve static files at --static-url from --static-root (or Django\'s STATIC_URL/STATIC_ROOT)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l media -d 'Serve uploaded media at --media-url from --media-root (or Django\'s MEDIA_URL/MEDIA_ROOT)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l autoreload -d 'Reload when a source file of the app changes (development)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l access-log -d 'Log one line per request (remote, method, path, status, size, duration, worker)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l no-metrics -d 'Do not serve metrics'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l no-probe -d 'Do not run the probe server'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l debug -d 'Show failing checks\' messages in probe answers (they may name hosts or settings)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l log-probes -d 'Log probe requests too (they are not logged otherwise)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l debugger -d 'Start debugpy in the worker, listening on --debugger-port (at --bind\'s address) for VS Code or any Debug Adapter Protocol client to attach. Development only: it runs one worker with no --timeout, no frozen-worker kill and no --preload, and whoever reaches the port can run code in the worker. Needs debugpy in the workers\' Python'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -l debugger-wait -d 'With --debugger: the worker waits for the debugger to attach before it loads the app and reports ready (so breakpoints at import hit; --boot-timeout does not apply)'
complete -c hurricane -n "__fish_hurricane_using_subcommand serve" -s h -l help -d 'Print help'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l queue -d 'The queue to consume (declared if missing)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l exchange -d 'The topic exchange the queue is bound to (declared if missing)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l amqp-host -d 'Broker host [settings: AMQP_HOST]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l amqp-port -d 'Broker port [settings: AMQP_PORT]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l amqp-vhost -d 'Broker virtual host [settings: AMQP_VHOST]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l amqp-user -d 'Broker user [settings: AMQP_USER] [default: guest]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l amqp-password -d 'Broker password [settings: AMQP_PASSWORD] [default: guest]; never logged' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l amqp-url -d 'The broker as one URL, instead of the --amqp-* options' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l routing-key -d 'Bind the queue with this routing key (repeatable) [default: the handler\'s get_routing_keys(queue), else the queue\'s name]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l prefetch -d 'Deliveries the broker sends ahead of acks (basic.qos); they are spread over the workers' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l queue-stats-interval -d 'Seconds between readings of the queue\'s depth and consumer count (a passive queue.declare on a channel of its own, never on the scrape path), exported as hurricane_amqp_queue_messages and hurricane_amqp_queue_consumers (0: never read)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l reconnect-timeout -d 'With --reconnect, /alive fails once the broker has been lost this many seconds (0: never; a restart does not fix a broker outage)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l workers -d 'Number of handler processes [default: the CPUs this process may use]' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l bind -d 'Address of the probe server' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l probe-port -d 'Port of the probe server' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l graceful-timeout -d 'Seconds a stopping worker gets to finish its message before it is killed' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l boot-timeout -d 'Seconds a worker may take to import the handler and report ready' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l timeout -d 'Seconds a handler may run on one message before its worker is killed (0: no limit); the message is requeued' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l webhook-url -d 'POST a JSON event here on startup, readiness/liveness changes, reloads, shutdown and worker restarts (repeatable)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l python -d 'Python interpreter of the workers [default: $VIRTUAL_ENV/bin/python, else python3 on PATH; celery: the interpreter the command names, or its script\'s #! line]' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l chdir -d 'Change to this directory before loading the app (the handler, the command)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l pythonpath -d 'Directory to put first on the workers\' sys.path (repeatable; in the environment, \':\'-separated)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l startup-probe -d 'Path of the startup probe' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l readiness-probe -d 'Path of the readiness probe' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l liveness-probe -d 'Path of the liveness probe (`--probe` is the same option)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l metrics -d 'Path of the Prometheus metrics on the probe port' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l check-interval -d 'Seconds a Django check result answers probes before the next probe asks for a fresh one' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l log-format -d 'Log format of hurricane\'s lines (master and workers): text (key=value) or json (one object per line)' -r -f -a "text\t''
json\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l log-file -d 'Write hurricane\'s log lines (master and workers) to this file (SIGUSR1 reopens it)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l log-level -d 'Log level: error, warn, info, debug or trace' -r -f -a "error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l debugger-port -d 'Port debugpy listens on' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l pycharm-host -d 'Connect the worker to PyCharm\'s debug server on HOST (pydevd_pycharm.settrace, not suspended); the same one-worker rules as --debugger. Needs pydevd-pycharm in the workers\' Python' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l pycharm-port -d 'Port of PyCharm\'s debug server' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l durable -d 'Declare the exchange and the queue durable'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l reconnect -d 'Reconnect with backoff (0.5 s doubling to 30 s) when the broker connection or channel is lost'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l preload -d 'Import the handler once in a zygote process and fork the workers from it: they share its memory and start in milliseconds; HUP and --autoreload start a new zygote, so new code still loads. The handler module must not start threads at import (refused, exit 2)'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l autoreload -d 'Reload when a source file of the handler changes (development)'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l no-metrics -d 'Do not serve metrics'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l no-probe -d 'Do not run the probe server'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l debug -d 'Show failing checks\' messages in probe answers (they may name hosts or settings)'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l log-probes -d 'Log probe requests too (they are not logged otherwise)'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l debugger -d 'Start debugpy in the worker, listening on --debugger-port (at --bind\'s address) for VS Code or any Debug Adapter Protocol client to attach. Development only: it runs one worker with no --timeout, no frozen-worker kill and no --preload, and whoever reaches the port can run code in the worker. Needs debugpy in the workers\' Python'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -l debugger-wait -d 'With --debugger: the worker waits for the debugger to attach before it loads the app and reports ready (so breakpoints at import hit; --boot-timeout does not apply)'
complete -c hurricane -n "__fish_hurricane_using_subcommand consume" -s h -l help -d 'Print help'
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l liveness-timeout -d 'Seconds the worker\'s event loop (beat: its scheduler) may go without a tick before /alive fails' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l queue-stats-interval -d 'Seconds between readings of the length of every queue the worker consumes, on the worker\'s own broker connection (RabbitMQ or Redis), exported as hurricane_celery_queue_length (0: never)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l graceful-timeout -d 'Seconds Celery gets for its warm shutdown (running tasks finish) after SIGTERM before SIGKILL' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l bind -d 'Address of the probe server' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l probe-port -d 'Port of the probe server' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l webhook-url -d 'POST a JSON event here on startup, readiness/liveness changes and shutdown (repeatable)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l python -d 'Python interpreter of the workers [default: $VIRTUAL_ENV/bin/python, else python3 on PATH; celery: the interpreter the command names, or its script\'s #! line]' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l chdir -d 'Change to this directory before loading the app (the handler, the command)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l pythonpath -d 'Directory to put first on the workers\' sys.path (repeatable; in the environment, \':\'-separated)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l startup-probe -d 'Path of the startup probe' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l readiness-probe -d 'Path of the readiness probe' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l liveness-probe -d 'Path of the liveness probe (`--probe` is the same option)' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l metrics -d 'Path of the Prometheus metrics on the probe port' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l check-interval -d 'Seconds a Django check result answers probes before the next probe asks for a fresh one' -r
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l log-format -d 'Log format of hurricane\'s lines (master and workers): text (key=value) or json (one object per line)' -r -f -a "text\t''
json\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l log-file -d 'Write hurricane\'s log lines (master and workers) to this file (SIGUSR1 reopens it)' -r -F
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l log-level -d 'Log level: error, warn, info, debug or trace' -r -f -a "error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l no-metrics -d 'Do not serve metrics'
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l no-probe -d 'Do not run the probe server'
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l debug -d 'Show failing checks\' messages in probe answers (they may name hosts or settings)'
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -l log-probes -d 'Log probe requests too (they are not logged otherwise)'
complete -c hurricane -n "__fish_hurricane_using_subcommand celery" -s h -l help -d 'Print help'
complete -c hurricane -n "__fish_hurricane_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c hurricane -n "__fish_hurricane_using_subcommand help; and not __fish_seen_subcommand_from serve consume celery generate-docs help" -f -a "serve" -d 'Serve a WSGI app on N prefork workers (the default command)'
complete -c hurricane -n "__fish_hurricane_using_subcommand help; and not __fish_seen_subcommand_from serve consume celery generate-docs help" -f -a "consume" -d 'Consume an AMQP queue with N handler workers running a TopicHandler class'
complete -c hurricane -n "__fish_hurricane_using_subcommand help; and not __fish_seen_subcommand_from serve consume celery generate-docs help" -f -a "celery" -d 'Run a Celery worker or beat (`-- celery -A proj worker`) with probes, metrics and PID 1 duties'
complete -c hurricane -n "__fish_hurricane_using_subcommand help; and not __fish_seen_subcommand_from serve consume celery generate-docs help" -f -a "generate-docs" -d 'Write the man pages and shell completions into DIR (for packagers; scripts/gen-docs)'
complete -c hurricane -n "__fish_hurricane_using_subcommand help; and not __fish_seen_subcommand_from serve consume celery generate-docs help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
