"""The dashboard's sign-in page, with failed attempts limited per client address and per username."""
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from .ratelimit import client_ip, login_limiter


class LoginForm(AuthenticationForm):
    # Set by the view when the attempt is over the limit: the password is then never checked.
    throttle = None

    def clean(self):
        if self.throttle is not None:
            raise ValidationError(self.throttle.message + ".", code="throttled")
        return super().clean()


class LoginView(auth_views.LoginView):
    form_class = LoginForm

    def post(self, request, *args, **kwargs):
        limiter = login_limiter()
        keys = {"ip": client_ip(request), "username": request.POST.get("username", "")}
        verdict = limiter.attempt(**keys)
        form = self.get_form()
        if verdict.blocked:
            form.throttle = verdict
            response = self.form_invalid(form)
            response.status_code = 429
            response["Retry-After"] = str(verdict.retry_after)
            return response
        if form.is_valid():
            # Only the username's count is cleared: one good password must not reset a
            # client address that is guessing other users' passwords.
            limiter.succeeded(reset=("username",), **keys)
            return self.form_valid(form)
        return self.form_invalid(form)
